//! CUDA faults in the UI's output. A UI whose CUDA context broke ("an illegal
//! memory access was encountered", a device-side assert) answers HTTP as
//! before but fails every job until it is restarted (ComfyUI #11224, A1111
//! #10110); an out-of-memory error is often passing (the next, smaller job
//! works) but sometimes leaves the allocator unable to serve anything. The
//! output relay ([`super::output`]) classifies each line; the core decides
//! (docs/design.md, "Health").

/// One fault line, redacted and cut to [`MAX_TEXT`] characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CudaFault {
    /// `CUDA out of memory`, `OutOfMemoryError`: bad only if no progress follows.
    OutOfMemory(String),
    /// Any other `CUDA error:`: the context is gone.
    Broken(String),
}

impl CudaFault {
    /// The line as printed (for the status and the log).
    pub fn text(&self) -> &str {
        match self {
            CudaFault::OutOfMemory(t) | CudaFault::Broken(t) => t,
        }
    }
}

/// How much of a fault line is kept.
pub const MAX_TEXT: usize = 200;

/// The fault a line reports, if any. Out-of-memory first: PyTorch also writes
/// `CUDA error: out of memory` for some allocations.
pub fn classify(line: &str) -> Option<CudaFault> {
    let text = || line.trim().chars().take(MAX_TEXT).collect::<String>();
    if line.contains("CUDA out of memory")
        || line.contains("OutOfMemoryError")
        || line.contains("CUDA error: out of memory")
    {
        Some(CudaFault::OutOfMemory(text()))
    } else if line.contains("CUDA error:") || line.contains("cudaErrorIllegalAddress") {
        Some(CudaFault::Broken(text()))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_told_apart() {
        let illegal =
            "torch.AcceleratorError: CUDA error: an illegal memory access was encountered";
        assert_eq!(classify(illegal), Some(CudaFault::Broken(illegal.into())));
        let oom = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 7.79 GiB total capacity)";
        assert!(matches!(classify(oom), Some(CudaFault::OutOfMemory(_))));
        assert!(matches!(
            classify("RuntimeError: CUDA error: out of memory"),
            Some(CudaFault::OutOfMemory(_))
        ));
        assert!(matches!(
            classify("RuntimeError: CUDA error: device-side assert triggered"),
            Some(CudaFault::Broken(_))
        ));
        assert_eq!(classify("Total VRAM 24564 MB, total RAM 64000 MB"), None);
        assert_eq!(classify("Set vram state to: NORMAL_VRAM"), None);
        let long = format!("CUDA error: {}", "x".repeat(1000));
        assert_eq!(classify(&long).unwrap().text().chars().count(), MAX_TEXT);
    }
}
