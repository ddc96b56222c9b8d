//! Build script: links libtorch from the venv made by scripts/setup.sh (through torch-sys),
//! sets rpaths so binaries run without LD_LIBRARY_PATH, and compiles our CUDA kernels
//! (`cuda/*.cu`, nvcc) and their C++ autograd bridges (`cuda/*.cpp`, against the libtorch
//! headers) when nvcc is available. Without nvcc the crate still builds, CPU/reference-only;
//! `LCM_CUDA=1` turns a missing nvcc into an error; `LCM_CUDA=0` leaves the kernels out.

use std::env;
use std::path::{Path, PathBuf};

struct TorchInfo {
    version: String,
    site: PathBuf,
    lib: PathBuf,
    includes: Vec<PathBuf>,
}

/// libtorch as torch-sys finds it: `$LIBTORCH`, the `torch` folder of a PyTorch wheel
/// (set by .cargo/config.toml to the venv that scripts/setup.sh makes).
fn torch_info() -> TorchInfo {
    let dir = env::var_os("LIBTORCH")
        .map(PathBuf::from)
        .unwrap_or_default();
    let torch = std::fs::canonicalize(&dir).unwrap_or_else(|e| {
        panic!(
            "libtorch not found at LIBTORCH={:?} ({e}); run scripts/setup.sh first",
            dir
        )
    });
    let version_py = std::fs::read_to_string(torch.join("version.py")).unwrap_or_default();
    let version = version_py
        .lines()
        .find_map(|l| l.strip_prefix("__version__ = "))
        .map(|v| v.trim_matches(|c| c == '\'' || c == '"').to_string())
        .unwrap_or_else(|| "unknown".into());
    TorchInfo {
        version,
        site: torch.parent().unwrap().to_path_buf(),
        lib: torch.join("lib"),
        includes: vec![
            torch.join("include"),
            torch.join("include/torch/csrc/api/include"),
        ],
    }
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(lcm_cuda)");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LCM_CUDA");
    println!("cargo:rerun-if-changed=cuda");

    let torch = torch_info();
    let cuda_root = torch.site.join("nvidia").join("cu13");
    let cuda_lib = cuda_root.join("lib");
    println!("cargo:rustc-env=LCM_LIBTORCH_VERSION={}", torch.version);

    // Binaries and tests run here without LD_LIBRARY_PATH; on the GPU machine the
    // loader falls back to LD_LIBRARY_PATH (scripts/gpu-test.sh sets it).
    for dir in [&torch.lib, &cuda_lib] {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    }

    let nvcc = cuda_root.join("bin").join("nvcc");
    // LCM_CUDA=1: kernels required; LCM_CUDA=0: build without them even if nvcc is there.
    let lcm_cuda = env::var("LCM_CUDA").unwrap_or_default();
    let want_cuda = lcm_cuda == "1";
    let have_nvcc = nvcc.is_file() && cuda_root.join("include").join("nv").join("target").exists();
    build_dist(&torch, &cuda_root, have_nvcc && lcm_cuda != "0");
    if !have_nvcc || lcm_cuda == "0" {
        if want_cuda {
            panic!(
                "LCM_CUDA=1 but no nvcc at {} (with CCCL headers); run scripts/setup.sh",
                nvcc.display()
            );
        }
        println!(
            "cargo:warning=nvcc not found: building without CUDA kernels (reference ops only)"
        );
        println!("cargo:rustc-env=LCM_CUDA_KERNELS=");
        // Keep libtorch_cuda linked so tch sees GPUs even without our kernels.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        return;
    }

    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    // The wheel ships only libcudart.so.13; the linker wants the unversioned name.
    let link_dir = out_dir.join("cudart");
    std::fs::create_dir_all(&link_dir).unwrap();
    let unversioned = link_dir.join("libcudart.so");
    let _ = std::fs::remove_file(&unversioned);
    std::os::unix::fs::symlink(cuda_lib.join("libcudart.so.13"), &unversioned).unwrap();

    // cc finds nvcc on PATH (passing it as .compiler() makes cc forward gcc-only flags).
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![nvcc.parent().unwrap().to_path_buf()];
    paths.extend(env::split_paths(&path));
    env::set_var("PATH", env::join_paths(paths).unwrap());

    let (cu_files, cpp_files) = sources(Path::new("cuda"));
    let kernels: Vec<String> = cu_files
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();

    let mut cu = cc::Build::new();
    cu.cuda(true)
        .cudart("shared")
        // cc would add nvcc's -G (device debug, no optimisation) whenever debug info is on.
        .debug(false)
        .flag("-std=c++17")
        .flag("-O3")
        .flag("--use_fast_math")
        .flag("-gencode=arch=compute_90a,code=sm_90a")
        .flag("-gencode=arch=compute_80,code=compute_80")
        .include("cuda")
        .warnings(false);
    for f in &cu_files {
        cu.file(f);
    }
    cu.compile("lcm_kernels");

    let mut cpp = cc::Build::new();
    cpp.cpp(true)
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("GLOG_USE_GLOG_EXPORT", None)
        .flag("-O2")
        .flag("-w")
        .include("cuda")
        .include(cuda_root.join("include"));
    for inc in &torch.includes {
        cpp.include(inc);
    }
    for f in &cpp_files {
        cpp.file(f);
    }
    cpp.compile("lcm_bridge");

    println!("cargo:rustc-link-search=native={}", link_dir.display());
    println!("cargo:rustc-link-search=native={}", cuda_lib.display());
    println!("cargo:rustc-link-search=native={}", torch.lib.display());
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    for lib in ["torch_cuda", "c10_cuda", "c10", "torch_cpu", "cudart"] {
        println!("cargo:rustc-link-arg=-l{lib}");
    }
    println!("cargo:rustc-cfg=lcm_cuda");
    println!("cargo:rustc-env=LCM_CUDA_KERNELS={}", kernels.join(","));
}

/// The data-parallel bridge (`cpp/dist.cpp`: c10d's TCPStore, process groups and DDP's
/// Reducer; `cpp/dist_nccl.cpp`: the NCCL backend, with the CUDA toolkit's headers).
/// c10d's Gloo header includes Gloo's own headers, which the wheel does not ship:
/// scripts/setup.sh puts them at `LCM_GLOO_INCLUDE` (.cargo/config.toml). Without them the
/// Gloo backend (CPU) is left out and says so when asked for; `LCM_DIST=1` makes that an
/// error here.
fn build_dist(torch: &TorchInfo, cuda_root: &Path, nccl: bool) {
    println!("cargo:rerun-if-env-changed=LCM_GLOO_INCLUDE");
    println!("cargo:rerun-if-env-changed=LCM_DIST");
    println!("cargo:rerun-if-changed=cpp");
    let gloo = env::var_os("LCM_GLOO_INCLUDE").map(PathBuf::from);
    let gloo = gloo.filter(|g| g.join("gloo").join("context.h").is_file());
    let mut cpp = cc::Build::new();
    cpp.cpp(true)
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("GLOG_USE_GLOG_EXPORT", None)
        .flag("-O2")
        .flag("-w")
        .file("cpp/dist.cpp");
    for inc in &torch.includes {
        cpp.include(inc);
    }
    match gloo {
        Some(dir) => {
            cpp.define("LCM_DIST_GLOO", None).include(dir);
        }
        None if env::var("LCM_DIST").as_deref() == Ok("1") => {
            panic!("LCM_DIST=1 but no Gloo headers at LCM_GLOO_INCLUDE; run scripts/setup.sh")
        }
        None => println!(
            "cargo:warning=no Gloo headers: building without the Gloo backend (CPU data parallelism)"
        ),
    }
    if nccl {
        cpp.define("LCM_DIST_NCCL", None)
            .include(cuda_root.join("include"))
            .include(torch.site.join("nvidia").join("nccl").join("include"))
            .file("cpp/dist_nccl.cpp");
    }
    cpp.compile("lcm_dist");
    println!("cargo:rustc-link-search=native={}", torch.lib.display());
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    for lib in ["torch_cuda", "torch_cpu", "c10"] {
        println!("cargo:rustc-link-arg=-l{lib}");
    }
    if nccl {
        println!("cargo:rustc-link-arg=-lc10_cuda");
    }
}

/// Every `.cu` (kernels) and `.cpp` (autograd bridge) directly under `cuda/`, sorted.
fn sources(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut cu = vec![];
    let mut cpp = vec![];
    for entry in std::fs::read_dir(dir).expect("cuda/ directory") {
        let p = entry.unwrap().path();
        println!("cargo:rerun-if-changed={}", p.display());
        match p.extension().and_then(|e| e.to_str()) {
            Some("cu") => cu.push(p),
            Some("cpp") => cpp.push(p),
            _ => {}
        }
    }
    cu.sort();
    cpp.sort();
    (cu, cpp)
}
