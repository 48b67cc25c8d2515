//! Choosing an adapter the way wgpu users expect.

use crate::error::{Error, Result};

/// What to do on a machine without a GPU driver; part of every "no adapter" error.
pub const NO_ADAPTER_HINT: &str = "no GPU adapter found. On a machine without a GPU driver, \
    install a software Vulkan device: `sudo apt-get install mesa-vulkan-drivers` on \
    Debian/Ubuntu (it provides lavapipe). Check what wgpu sees with `vulkaninfo --summary` or \
    unset WGPU_BACKEND / WGPU_ADAPTER_NAME.";

/// A wgpu instance for the backends in `WGPU_BACKEND` (all by default).
pub fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

/// Every adapter the instance finds, best first (see [`pick_adapter`]).
pub async fn adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let mut all = instance.enumerate_adapters(wgpu::Backends::all()).await;
    all.sort_by_key(|a| rank(&a.get_info()));
    all
}

/// Lower is better: real GPUs before software ones, and the compute-first backends
/// (Vulkan, Metal, D3D12) before OpenGL, whose compute support is the narrowest.
fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let device = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        wgpu::Backend::BrowserWebGpu => 1,
        _ => 2,
    };
    (device, backend)
}

/// Picks an adapter: the first whose name contains `WGPU_ADAPTER_NAME` (case-insensitive) if
/// that is set, else the best by device type and backend, among the backends in
/// `WGPU_BACKEND`. The error says how to get a software device when there is none.
pub async fn pick_adapter() -> Result<wgpu::Adapter> {
    let name = std::env::var("WGPU_ADAPTER_NAME").ok();
    pick_adapter_named(&instance(), name.as_deref()).await
}

/// [`pick_adapter`] with an explicit name filter instead of `WGPU_ADAPTER_NAME`.
pub async fn pick_adapter_named(
    instance: &wgpu::Instance,
    name: Option<&str>,
) -> Result<wgpu::Adapter> {
    let all = adapters(instance).await;
    if all.is_empty() {
        return Err(Error::NoAdapter(NO_ADAPTER_HINT.into()));
    }
    match name {
        None => Ok(all.into_iter().next().expect("not empty")),
        Some(name) => {
            let want = name.to_lowercase();
            let names: Vec<String> = all.iter().map(|a| describe(&a.get_info())).collect();
            all.into_iter()
                .find(|a| a.get_info().name.to_lowercase().contains(&want))
                .ok_or_else(|| {
                    Error::NoAdapter(format!(
                        "no adapter's name contains {name:?}; found: {}",
                        names.join("; ")
                    ))
                })
        }
    }
}

/// One line naming an adapter: "name | backend | device type | driver".
pub fn describe(info: &wgpu::AdapterInfo) -> String {
    // Browsers hide the adapter's name (and driver) from pages.
    let name = if info.name.is_empty() {
        "(unnamed)"
    } else {
        &info.name
    };
    format!(
        "{name} | {:?} | {:?} | {} {}",
        info.backend, info.device_type, info.driver, info.driver_info
    )
    .trim_end()
    .to_string()
}
