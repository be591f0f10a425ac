//! The compile-time backend choice. `cuda-untuned` is the CUDA backend; `cuda` is it with Burn's
//! autotuning, so every CUDA build has `cuda-untuned`.

#[cfg(feature = "cuda-untuned")]
mod chosen {
    pub type Backend = burn::backend::Cuda;
    pub const NAME: &str = "cuda";

    /// `cuda` / `cuda:N`.
    pub fn device(name: &str) -> Option<burn::backend::cuda::CudaDevice> {
        match name.strip_prefix("cuda") {
            Some("") => Some(Default::default()),
            Some(index) => index.strip_prefix(':')?.parse().ok().map(burn::backend::cuda::CudaDevice::new),
            None => None,
        }
    }
}

#[cfg(all(feature = "wgpu", not(feature = "cuda-untuned")))]
mod chosen {
    use burn::backend::wgpu::WgpuDevice;

    pub type Backend = burn::backend::Wgpu;
    pub const NAME: &str = "wgpu";

    /// `wgpu` (the default adapter), `wgpu:N` (discrete GPU N), `cpu` (a software adapter).
    pub fn device(name: &str) -> Option<WgpuDevice> {
        match name {
            "wgpu" => Some(WgpuDevice::DefaultDevice),
            "cpu" => Some(WgpuDevice::Cpu),
            _ => name.strip_prefix("wgpu:")?.parse().ok().map(WgpuDevice::DiscreteGpu),
        }
    }
}

#[cfg(all(feature = "flex", not(feature = "wgpu"), not(feature = "cuda-untuned")))]
mod chosen {
    pub type Backend = burn::backend::Flex;
    pub const NAME: &str = "flex";

    /// `cpu`: Flex has one device; several `cpu` entries are several workers on it.
    pub fn device(name: &str) -> Option<burn::backend::flex::FlexDevice> {
        (name == "cpu").then_some(burn::backend::flex::FlexDevice)
    }
}

#[cfg(all(not(feature = "flex"), not(feature = "wgpu"), not(feature = "cuda-untuned")))]
mod chosen {
    pub type Backend = burn::backend::NdArray;
    pub const NAME: &str = "ndarray";

    /// `cpu`: NdArray has one device; several `cpu` entries are several workers on it.
    pub fn device(name: &str) -> Option<burn::backend::ndarray::NdArrayDevice> {
        (name == "cpu").then_some(burn::backend::ndarray::NdArrayDevice::Cpu)
    }
}

/// The devices named in an experiment's `distributed.devices` (empty: the default device).
pub fn devices(names: &[String]) -> anyhow::Result<Vec<burn::tensor::Device<Backend>>> {
    if names.is_empty() {
        return Ok(vec![Default::default()]);
    }
    names
        .iter()
        .map(|name| {
            chosen::device(name).ok_or_else(|| {
                anyhow::anyhow!("distributed.devices: `{name}` is not a device of the {} backend", chosen::NAME)
            })
        })
        .collect()
}

#[cfg(not(any(feature = "ndarray", feature = "flex", feature = "wgpu", feature = "cuda-untuned")))]
compile_error!("enable one backend feature: ndarray, flex, wgpu or cuda");

/// The backend this binary was built for.
pub type Backend = chosen::Backend;

/// Its name (`flex`, `ndarray`, `wgpu`, `cuda`).
pub const NAME: &str = chosen::NAME;

/// The CPU backend `dijiang bench` measures beside this binary's, in the same run: NdArray (one
/// core, the previous default) beside Flex. NdArray is always compiled in (`dijiang-model` records
/// parameter shapes on it), so the type exists in every build; `CPU_PEER` says whether it runs.
pub type CpuPeer = burn::backend::NdArray;

/// `Some("ndarray")` where the binary's backend is Flex; `None` elsewhere (a GPU backend has no
/// CPU peer, and NdArray is its own).
pub const CPU_PEER: Option<&str> = if IS_FLEX { Some("ndarray") } else { None };

const IS_FLEX: bool = cfg!(all(feature = "flex", not(feature = "wgpu"), not(feature = "cuda-untuned")));

/// The backend's name and default device.
pub fn describe() -> String {
    let device = burn::tensor::Device::<Backend>::default();
    format!("backend: {NAME} (device {device:?})")
}
