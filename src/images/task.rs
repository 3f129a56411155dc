//! One render as the core runs it, in a task of its own: check the disk (a
//! picture already there is not rendered again), ask the UI, write the files.

use std::path::PathBuf;

use super::book::Job;
use super::files::{Outputs, Sidecar};
use super::fingerprint::declaration;
use super::render::{RenderError, Renderer};
use crate::ui::flavor::Flavor;

/// Renders `job` unless its file on disk already matches; returns the PNG path.
pub async fn run(
    renderer: &Renderer,
    outputs: Outputs,
    flavor: Flavor,
    job: Job,
) -> Result<PathBuf, RenderError> {
    let recorded = {
        let (outputs, name) = (outputs.clone(), job.name.clone());
        tokio::task::spawn_blocking(move || outputs.recorded(&name))
            .await
            .ok()
            .flatten()
    };
    if !job.force && recorded.as_deref() == Some(job.fingerprint.as_str()) {
        tracing::info!(image = %job.name, "declared image already on disk");
        return Ok(outputs.png(&job.name));
    }
    tracing::info!(image = %job.name, "rendering declared image");
    let began = std::time::Instant::now();
    let rendered = renderer.render(&job.image).await?;
    let sidecar = Sidecar {
        name: job.name.clone(),
        fingerprint: job.fingerprint,
        declaration: declaration(&job.image),
        models: job.models,
        flavor: flavor.name().to_string(),
        seed: rendered.seed,
        info: rendered.info,
        rendered_at_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let png = rendered.png;
    let path = tokio::task::spawn_blocking(move || outputs.write(&png, &sidecar))
        .await
        .map_err(|e| RenderError::Ui(format!("writing the image: {e}")))?
        .map_err(|e| RenderError::Ui(format!("writing the image: {e}")))?;
    tracing::info!(image = %job.name, path = %path.display(), took = ?began.elapsed(), "declared image written");
    Ok(path)
}
