//! Every shader variant parses and validates with naga, with no GPU; the uniform struct's
//! WGSL layout matches its Rust twin.

use wgpu_norm::shaders::{Kernel, Params, Variant};

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
fn every_variant_validates() {
    let all = Variant::all();
    assert!(
        all.len() > 50,
        "expected the full variant matrix, got {}",
        all.len()
    );
    let failures: Vec<String> = all.iter().filter_map(|v| validate(v).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
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
        assert!(
            src.contains(&format!("c[{}u]", v.cache - 1)),
            "{}",
            v.label()
        );
    }
}
