//! The tool's .npy files: float32 or float16 in C order, read whole and checked before any
//! data is read; written whole to a temporary file renamed over the target, so that an
//! existing file is either replaced by a complete new one or left as it was.
//! `tests/npy.rs` feeds it random bytes, truncations and mutated headers.

use std::path::Path;

use wgpu_norm::DType;

/// An array from a .npy file, its values as f32.
pub struct Array {
    pub shape: Vec<u64>,
    pub data: Vec<f32>,
    pub dtype: DType,
}

/// Reads `path`; every problem is a one-line message naming the file.
pub fn read(path: &Path) -> Result<Array, String> {
    let show = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open {show}: {e}"))?;
    let file_len = file
        .metadata()
        .map_err(|e| format!("cannot read {show}: {e}"))?
        .len();
    let npy = npyz::NpyFile::new(std::io::BufReader::new(file))
        .map_err(|e| format!("{show}: not a valid .npy file: {e}"))?;
    if npy.order() == npyz::Order::Fortran {
        return Err(format!(
            "{show}: Fortran-order arrays are not supported; save it in C order \
             (numpy.ascontiguousarray)"
        ));
    }
    let dtype = npy.dtype();
    let float_of = |size| {
        matches!(&dtype, npyz::DType::Plain(t)
            if t.type_char() == npyz::TypeChar::Float && t.size_field() == size)
    };
    let (storage, size) = if float_of(4) {
        (DType::F32, 4)
    } else if float_of(2) {
        (DType::F16, 2)
    } else {
        return Err(format!(
            "{show}: unsupported dtype {}: float32 and float16 are supported (.npy has no \
             standard bfloat16)",
            dtype.descr()
        ));
    };
    // The header's claim, checked against the file before anything is allocated for it.
    let shape = npy.shape().to_vec();
    let bytes = shape
        .iter()
        .try_fold(size, |n: u64, &d| n.checked_mul(d))
        .ok_or_else(|| {
            format!("{show}: shape {shape:?} holds more elements than can be counted")
        })?;
    if bytes > file_len {
        return Err(format!(
            "{show}: shape {shape:?} needs {bytes} bytes of data, the file has {file_len} in all"
        ));
    }
    let truncated = |e: std::io::Error| format!("{show}: truncated or unreadable data: {e}");
    let data = match storage {
        DType::F16 => {
            let data: Vec<half::f16> = npy.into_vec().map_err(truncated)?;
            data.into_iter().map(half::f16::to_f32).collect()
        }
        _ => npy.into_vec().map_err(truncated)?,
    };
    Ok(Array {
        shape,
        data,
        dtype: storage,
    })
}

/// Writes `data` with `shape` to `path` as `dtype` (f16 or f32), atomically.
pub fn write(path: &Path, shape: &[u64], data: &[f32], dtype: DType) -> Result<(), String> {
    let show = path.display();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let Some(name) = name else {
        return Err(format!("{show}: not a file name"));
    };
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let file = std::fs::File::create(&tmp)?;
        let mut out = std::io::BufWriter::new(file);
        use npyz::WriterBuilder;
        if dtype == DType::F16 {
            let mut w = npyz::WriteOptions::<half::f16>::new()
                .default_dtype()
                .shape(shape)
                .writer(&mut out)
                .begin_nd()?;
            w.extend(data.iter().map(|&v| half::f16::from_f32(v)))?;
            w.finish()?;
        } else {
            let mut w = npyz::WriteOptions::<f32>::new()
                .default_dtype()
                .shape(shape)
                .writer(&mut out)
                .begin_nd()?;
            w.extend(data.iter().copied())?;
            w.finish()?;
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {show}: {e}")
    })
}
