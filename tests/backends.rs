//! Every shader variant the crate can build, translated by naga (the version wgpu uses) to
//! what each backend compiles: MSL for Metal, HLSL shader model 6.0 for D3D12 (subgroups are
//! wave operations there), SPIR-V for Vulkan and GLSL ES 3.1 for OpenGL (which wgpu gives no
//! subgroups). Metal and D3D12 users then never meet a shader that does not compile, and CI,
//! where the validators are installed (`spirv-val`, `glslangValidator`), also validates a
//! sample of the output with them. No GPU needed.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;

use wgpu_norm::DType;
use wgpu_norm::shaders::Variant;

fn module(v: &Variant) -> Result<(naga::Module, naga::valid::ModuleInfo), String> {
    let source = v.source();
    let module = naga::front::wgsl::parse_str(&source)
        .map_err(|e| format!("{}: {}", v.label(), e.emit_to_string(&source)))?;
    let mut caps = naga::valid::Capabilities::empty();
    if v.subgroups {
        caps |= naga::valid::Capabilities::SUBGROUP;
    }
    if v.act != DType::F32 || v.param != DType::F32 {
        caps |= naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    }
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
        .subgroup_operations(naga::valid::SubgroupOperationSet::all())
        .validate(&module)
        .map_err(|e| format!("{}: {}", v.label(), e.emit_to_string(&source)))?;
    Ok((module, info))
}

fn msl(m: &naga::Module, info: &naga::valid::ModuleInfo) -> Result<String, String> {
    let options = naga::back::msl::Options {
        lang_version: (2, 4),
        ..Default::default()
    };
    let pipeline = naga::back::msl::PipelineOptions {
        entry_point: Some((naga::ShaderStage::Compute, "main".into())),
        ..Default::default()
    };
    naga::back::msl::write_string(m, info, &options, &pipeline)
        .map(|(s, _)| s)
        .map_err(|e| format!("MSL: {e}"))
}

fn hlsl(m: &naga::Module, info: &naga::valid::ModuleInfo) -> Result<String, String> {
    let options = naga::back::hlsl::Options {
        shader_model: naga::back::hlsl::ShaderModel::V6_0,
        ..Default::default()
    };
    let pipeline = naga::back::hlsl::PipelineOptions {
        entry_point: Some((naga::ShaderStage::Compute, "main".into())),
    };
    let mut out = String::new();
    naga::back::hlsl::Writer::new(&mut out, &options, &pipeline)
        .write(m, info, None)
        .map_err(|e| format!("HLSL: {e}"))?;
    Ok(out)
}

fn spirv(m: &naga::Module, info: &naga::valid::ModuleInfo) -> Result<Vec<u32>, String> {
    let options = naga::back::spv::Options {
        lang_version: (1, 3),
        ..Default::default()
    };
    let pipeline = naga::back::spv::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: "main".into(),
    };
    naga::back::spv::write_vec(m, info, &options, Some(&pipeline))
        .map_err(|e| format!("SPIR-V: {e}"))
}

fn glsl(m: &naga::Module, info: &naga::valid::ModuleInfo) -> Result<String, String> {
    let options = naga::back::glsl::Options::default();
    let pipeline = naga::back::glsl::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: "main".into(),
        multiview: None,
    };
    let mut out = String::new();
    naga::back::glsl::Writer::new(
        &mut out,
        m,
        info,
        &options,
        &pipeline,
        naga::proc::BoundsCheckPolicies::default(),
    )
    .and_then(|mut w| w.write())
    .map_err(|e| format!("GLSL: {e}"))?;
    Ok(out)
}

/// One variant of each kind that the external validators see: every kernel, storage pair,
/// vector width, cache, stream or both, reduction and binding mode, at one workgroup size.
fn sample(all: &[Variant]) -> Vec<Variant> {
    let mut seen = BTreeSet::new();
    all.iter()
        .filter(|v| {
            let key = (
                v.kernel,
                v.act,
                v.param,
                v.vec4,
                v.cache > 0,
                v.streamed,
                v.slices > 1,
                v.subgroups,
                v.shared,
                v.saved,
            );
            seen.insert(key)
        })
        .copied()
        .collect()
}

/// Runs an installed validator on `file`; None where it is not installed.
fn validate_with(tool: &str, args: &[&str], file: &PathBuf) -> Option<Result<(), String>> {
    let out = std::process::Command::new(tool)
        .args(args)
        .arg(file)
        .output()
        .ok()?;
    Some(if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{tool} {}: {}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    })
}

#[test]
fn every_variant_translates_for_every_backend() {
    let all = Variant::all();
    let mut failures = Vec::new();
    for v in &all {
        let (m, info) = match module(v) {
            Ok(x) => x,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        let mut results = vec![msl(&m, &info).map(drop), hlsl(&m, &info).map(drop)];
        results.push(spirv(&m, &info).map(drop));
        // wgpu's OpenGL backend offers no subgroups: those variants never reach GLSL.
        if !v.subgroups {
            results.push(glsl(&m, &info).map(drop));
        }
        failures.extend(
            results
                .into_iter()
                .filter_map(Result::err)
                .map(|e| format!("{}: {e}", v.label())),
        );
    }
    eprintln!(
        "translated {} variants to MSL, HLSL, SPIR-V and GLSL",
        all.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} variants fail to translate:\n{}",
        failures.len(),
        all.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}

#[test]
fn external_validators_accept_a_sample() {
    // CI installs them and sets this, so that a missing validator fails there; elsewhere the
    // test says what it did not run.
    let required = std::env::var_os("WGPU_NORM_REQUIRE_VALIDATORS").is_some();
    let dir = std::env::temp_dir().join(format!("wgpu-norm-backends-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sample = sample(&Variant::all());
    let (mut ran, mut missing, mut failures) = (BTreeSet::new(), BTreeSet::new(), Vec::new());
    for (i, v) in sample.iter().enumerate() {
        let (m, info) = module(v).unwrap();
        let spv = dir.join(format!("{i}.spv"));
        let words = spirv(&m, &info).unwrap();
        std::fs::write(&spv, bytemuck::cast_slice::<u32, u8>(&words)).unwrap();
        let mut checks = vec![("spirv-val", vec!["--target-env", "vulkan1.1"], spv)];
        if !v.subgroups {
            let comp = dir.join(format!("{i}.comp"));
            std::fs::File::create(&comp)
                .unwrap()
                .write_all(glsl(&m, &info).unwrap().as_bytes())
                .unwrap();
            checks.push(("glslangValidator", vec![], comp));
        }
        for (tool, args, file) in checks {
            match validate_with(tool, &args, &file) {
                None => {
                    missing.insert(tool);
                }
                Some(r) => {
                    ran.insert(tool);
                    if let Err(e) = r {
                        failures.push(format!("{}: {e}", v.label()));
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    eprintln!(
        "validated {} variants with {ran:?}; not installed: {missing:?}",
        sample.len()
    );
    assert!(
        !required || missing.is_empty(),
        "WGPU_NORM_REQUIRE_VALIDATORS is set and {missing:?} is not installed \
         (Debian: spirv-tools, glslang-tools)"
    );
}
