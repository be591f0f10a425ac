//! The compile-time backend choice.

#[cfg(feature = "cuda")]
mod chosen {
    pub type Backend = burn::backend::Cuda;
    pub const NAME: &str = "cuda";
}

#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
mod chosen {
    pub type Backend = burn::backend::Wgpu;
    pub const NAME: &str = "wgpu";
}

#[cfg(all(not(feature = "wgpu"), not(feature = "cuda")))]
mod chosen {
    pub type Backend = burn::backend::NdArray;
    pub const NAME: &str = "ndarray";
}

#[cfg(not(any(feature = "ndarray", feature = "wgpu", feature = "cuda")))]
compile_error!("enable one backend feature: ndarray, wgpu or cuda");

/// The backend this binary was built for.
pub type Backend = chosen::Backend;

/// The backend's name and default device.
pub fn describe() -> String {
    let device = burn::tensor::Device::<Backend>::default();
    format!("backend: {} (device {device:?})", chosen::NAME)
}
