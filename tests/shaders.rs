//! Every shader variant parses and validates with naga, with no GPU; its bindings, as naga
//! reflects them, are its kernel's table; the uniform struct's WGSL layout matches its Rust
//! twin.

use wgpu_norm::DType;
use wgpu_norm::kernel::{Class, Extent};
use wgpu_norm::shaders::{Kernel, MAX_WORKGROUP_BYTES, Params, Variant};

fn validate(variant: &Variant) -> Result<naga::Module, String> {
    let source = variant.source();
    let module = naga::front::wgsl::parse_str(&source)
        .map_err(|e| format!("{}:\n{}", variant.label(), e.emit_to_string(&source)))?;
    let mut caps = naga::valid::Capabilities::empty();
    if variant.subgroups {
        caps |= naga::valid::Capabilities::SUBGROUP;
    }
    // pack2x16float / unpack2x16float, for 16-bit storage only.
    if variant.act != wgpu_norm::DType::F32 || variant.param != wgpu_norm::DType::F32 {
        caps |= naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    }
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
        .subgroup_operations(naga::valid::SubgroupOperationSet::all())
        .validate(&module)
        .map_err(|e| format!("{}:\n{}", variant.label(), e.emit_to_string(&source)))?;
    Ok(module)
}

#[test]
fn every_variant_validates_and_binds_its_table() {
    let all = Variant::all();
    assert!(
        all.len() > 50,
        "expected the full variant matrix, got {}",
        all.len()
    );
    // Thousands of variants: spread over the machine's cores.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let failures: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = all
            .chunks(all.len().div_ceil(threads))
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .filter_map(|v| {
                            validate(v)
                                .and_then(|m| {
                                    reflect(v, &m)?;
                                    fits_workgroup_memory(v, &m)
                                })
                                .err()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a validation thread panicked"))
            .collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Bytes of workgroup memory a variant may take, as naga lays its variables out: every one
/// the module declares (each module has one entry point; naga's SPIR-V writer emits only
/// those the entry point reaches, its HLSL writer all of them), each rounded up to 16 bytes
/// as WebGPU counts them.
fn workgroup_bytes(module: &naga::Module) -> u32 {
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).unwrap();
    module
        .global_variables
        .iter()
        .filter(|(_, g)| g.space == naga::AddressSpace::WorkGroup)
        .map(|(_, g)| layouter[g.ty].size.next_multiple_of(16))
        .sum()
}

/// Within what every device allows (wgpu 30 does not check it; a driver may fail or
/// misbehave past it).
fn fits_workgroup_memory(v: &Variant, module: &naga::Module) -> Result<(), String> {
    let bytes = workgroup_bytes(module);
    if bytes > MAX_WORKGROUP_BYTES {
        return Err(format!(
            "{}: {bytes} bytes of workgroup memory, more than MAX_WORKGROUP_BYTES ({MAX_WORKGROUP_BYTES})",
            v.label()
        ));
    }
    Ok(())
}

#[test]
fn workgroup_memory_counts_every_declared_variable() {
    // The tree of moments at 1024 invocations: `red`, 3 · 1024 f32, and `total`, one vec4.
    let tree = Variant::for_row(Kernel::LayerNorm, 1 << 16, true, false, false, 1024);
    assert_eq!(tree.wg, 1024);
    let module = validate(&tree).unwrap();
    assert!(workgroup_bytes(&module) >= 3 * 1024 * 4 + 16);
    // The floor is wgpu's own, and nothing wgpu accepts for compute is below it.
    assert_eq!(
        MAX_WORKGROUP_BYTES,
        wgpu::Limits::downlevel_defaults().max_compute_workgroup_storage_size
    );
}

/// A naga type as WGSL spells it (the few the bindings use).
fn type_name(module: &naga::Module, ty: naga::Handle<naga::Type>) -> String {
    let scalar = |s: &naga::Scalar| match (s.kind, s.width) {
        (naga::ScalarKind::Float, 4) => "f32",
        (naga::ScalarKind::Uint, 4) => "u32",
        _ => "?",
    };
    match &module.types[ty].inner {
        naga::TypeInner::Scalar(s) => scalar(s).to_string(),
        naga::TypeInner::Vector { size, scalar: s } => format!("vec{}<{}>", *size as u8, scalar(s)),
        naga::TypeInner::Atomic(s) => format!("atomic<{}>", scalar(s)),
        naga::TypeInner::Array { base, .. } => format!("array<{}>", type_name(module, *base)),
        naga::TypeInner::Struct { .. } => module.types[ty].name.clone().unwrap_or_default(),
        other => format!("{other:?}"),
    }
}

/// The variant's bindings as naga reflects them, against its kernel's table: binding 0 the
/// uniform params, binding i + 1 the table's i-th operand with its name, access and element
/// type, nothing else; and an accessor for each way the table says the kernel uses it.
fn reflect(v: &Variant, module: &naga::Module) -> Result<(), String> {
    let mut found: Vec<(u32, String)> = module
        .global_variables
        .iter()
        .filter_map(|(_, g)| {
            let b = g.binding.as_ref()?;
            let space = match g.space {
                naga::AddressSpace::Uniform => "uniform".to_string(),
                naga::AddressSpace::Storage { access } => {
                    if access.contains(naga::StorageAccess::STORE) {
                        "storage, read_write".to_string()
                    } else {
                        "storage, read".to_string()
                    }
                }
                other => format!("{other:?}"),
            };
            let name = g.name.clone().unwrap_or_default();
            let ty = type_name(module, g.ty);
            Some((
                b.binding,
                format!("@group({}) var<{space}> {name}: {ty}", b.group),
            ))
        })
        .collect();
    found.sort();
    let def = v.kernel.def();
    let mut expected = vec![(0, "@group(0) var<uniform> params: Params".to_string())];
    for (i, s) in def.slots.iter().enumerate() {
        let dtype = match s.class {
            Class::Act => v.act,
            Class::Param => v.param,
            Class::F32 => DType::F32,
        };
        let writes = s.access.writes();
        let ty = match (s.extent, dtype, v.vec4, writes) {
            (Extent::PerRow, ..) => "f32",
            (Extent::RowParts, ..) => "vec4<f32>",
            (_, DType::F32, true, _) => "vec4<f32>",
            (_, DType::F32, false, _) => "f32",
            (_, _, true, _) => "vec2<u32>",
            (_, _, false, false) => "u32",
            (_, _, false, true) => "atomic<u32>",
        };
        let access = if writes || v.shared {
            "read_write"
        } else {
            "read"
        };
        let name = s.operand.wgsl();
        expected.push((
            i as u32 + 1,
            format!("@group(0) var<storage, {access}> {name}: array<{ty}>"),
        ));
        let has = |f: &str| {
            module
                .functions
                .iter()
                .any(|(_, x)| x.name.as_deref() == Some(f))
        };
        if s.access.reads() && !has(&format!("ld_{name}")) {
            return Err(format!("{}: no ld_{name}", v.label()));
        }
        if writes && !has(&format!("st_{name}")) {
            return Err(format!("{}: no st_{name}", v.label()));
        }
    }
    if found != expected {
        return Err(format!(
            "{}: bindings\n{found:#?}\nbut the table says\n{expected:#?}",
            v.label()
        ));
    }
    Ok(())
}

#[test]
fn kernels_name_no_binding_number() {
    // Bindings, offsets and flag bits are generated from the tables; a hand-written
    // `off_f(5u)` or `@binding(3)` in a kernel would be a twin that naga cannot check.
    for entry in std::fs::read_dir("shaders").unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap();
            let named = ["off_f(", "off_v(", "@binding(", "FLAG_"]
                .iter()
                .any(|p| code.contains(p));
            let common = path.ends_with("common.wgsl")
                && (code.contains("fn off_") || code.contains("@binding(0)"));
            assert!(!named || common, "{}:{}: {line}", path.display(), n + 1);
        }
    }
}

#[test]
fn subgroup_code_needs_the_capability() {
    // The tree fallback must really be free of subgroup operations: validating the subgroup
    // variant without the capability has to fail.
    let v = Variant::for_row(Kernel::RmsNorm, 1024, true, true, false, 256);
    let source = v.source();
    let module = naga::front::wgsl::parse_str(&source).unwrap();
    let res = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module);
    assert!(res.is_err());
    let tree = Variant::for_row(Kernel::RmsNorm, 1024, true, false, false, 256);
    assert!(!tree.source().contains("subgroupAdd"));
}

#[test]
fn params_struct_matches_its_wgsl_twin() {
    let v = Variant::for_row(Kernel::LayerNorm, 64, false, false, false, 256);
    let module = validate(&v).unwrap();
    let (handle, ty) = module
        .types
        .iter()
        .find(|(_, t)| t.name.as_deref() == Some("Params"))
        .expect("struct Params in common.wgsl");
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).unwrap();
    let naga::TypeInner::Struct { members, span } = &ty.inner else {
        panic!("Params is not a struct");
    };
    assert_eq!(*span as usize, size_of::<Params>(), "size");
    assert_eq!(layouter[handle].size as usize, size_of::<Params>());
    let wgsl: Vec<(String, usize)> = members
        .iter()
        .map(|m| (m.name.clone().unwrap(), m.offset as usize))
        .collect();
    let rust: Vec<(String, usize)> = Params::FIELDS
        .iter()
        .map(|&(n, o)| (n.to_string(), o))
        .collect();
    assert_eq!(wgsl, rust);
}

#[test]
fn workgroup_size_comes_only_from_the_host() {
    // The one source of truth is `shaders::workgroup_size` in Rust; shader files say WG.
    for file in ["common", "reduce", "layer_norm", "rms_norm", "copy"] {
        let text = std::fs::read_to_string(format!("shaders/{file}.wgsl")).unwrap();
        for line in text.lines().filter(|l| l.contains("@workgroup_size")) {
            assert!(
                line.contains("@workgroup_size(WG)"),
                "shaders/{file}.wgsl: {line}"
            );
        }
    }
    for v in Variant::all() {
        assert!(v.source().contains(&format!("const WG: u32 = {}u;", v.wg)));
    }
}

#[test]
fn cached_variants_index_their_cache_with_constants() {
    // An array indexed by a loop variable would live in local memory: see shaders::unroll.
    for v in Variant::all().into_iter().filter(|v| v.cache > 0) {
        let src = v.source();
        assert!(!src.contains("[k]"), "{}", v.label());
        // A streamed backward row keeps only its partial sums in registers; a forward row
        // keeps what fits of itself (its tail streamed).
        let held_only = v.streamed && !v.tail();
        let last = if held_only { "pw" } else { "c" };
        assert!(
            src.contains(&format!("{last}[{}u]", v.cache - 1)),
            "{}",
            v.label()
        );
        assert_eq!(src.contains("c[0u]"), !held_only, "{}", v.label());
        assert_eq!(src.contains("lane + CACHE * RW"), v.tail(), "{}", v.label());
    }
}
