//! One attempt at one download: resume the `.part`, stream the body through a
//! bounded channel to a blocking writer that appends and hashes, then verify,
//! fsync and rename.
//!
//! Memory stays flat in the file size: [`IN_FLIGHT`] network chunks in the
//! channel, plus the writer's batches ([`writer`](super::writer)). Those are also
//! all a `kill -9` can lose: everything written before is in the `.part`.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::CONTENT_RANGE;
use tokio::sync::mpsc;

use super::http_get::{self, chain};
use super::writer::{Partial, WRITE_CHUNK, write_all};
use super::{Failure, cache, redact};
use crate::config::download::{Download, Sha256, cache_path};

/// Network chunks queued between the socket and the writer.
const IN_FLIGHT: usize = 8;
/// `total` while unknown.
pub const UNKNOWN: u64 = u64::MAX;

/// Bytes so far and expected, shared with whoever shows progress.
#[derive(Debug)]
pub struct Progress {
    /// Bytes in the `.part` (or the whole file once done).
    pub done: AtomicU64,
    /// Size of the file, [`UNKNOWN`] until a response says.
    pub total: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            done: AtomicU64::new(0),
            total: AtomicU64::new(UNKNOWN),
        }
    }
}

/// Where and with what mode the cache lives.
#[derive(Debug, Clone)]
pub struct Place {
    /// The data dir.
    pub data_dir: PathBuf,
    /// Mode for the folders created.
    pub mode: u32,
}

/// Runs one attempt (in the download helper, one attempt per process): resumes
/// the `.part` after re-hashing its prefix. `verifying` is called once all bytes
/// are in.
pub async fn attempt(
    client: &reqwest::Client,
    place: &Place,
    download: &Download,
    progress: &Arc<Progress>,
    verifying: impl FnOnce(),
) -> Result<(), Failure> {
    let final_path = cache_path(&place.data_dir, &download.sha256);
    // Every file operation runs off the async thread, which also moves the
    // network bytes and reports progress.
    let probe = final_path.clone();
    if let Ok(len) = blocking(move || {
        std::fs::metadata(&probe)
            .map(|m| m.len())
            .map_err(|e| io_failure("stat", &probe, e))
    })
    .await
    {
        progress.done.store(len, Ordering::Relaxed);
        progress.total.store(len, Ordering::Relaxed);
        return Ok(());
    }
    let part_path = cache::part_path(&place.data_dir, &download.sha256);
    let (place2, part2) = (place.clone(), part_path.clone());
    let (mut file, mut partial) = blocking(move || open_part(&place2, &part2)).await?;
    progress.done.store(partial.len(), Ordering::Relaxed);

    let (mut resp, url) = match http_get::get(client, download, partial.len()).await {
        Ok(answer) => answer,
        Err(failure) => {
            forget_empty(&part_path, partial.len()).await;
            return Err(failure);
        }
    };
    let total = match resp.status() {
        StatusCode::PARTIAL_CONTENT => {
            let (start, total) = content_range(&resp).unwrap_or((UNKNOWN, None));
            if start != partial.len() {
                return Err(Failure::Network(format!(
                    "{} resumed at the wrong offset",
                    redact(&url)
                )));
            }
            total
        }
        StatusCode::OK => {
            if partial.len() > 0 {
                // The server ignored Range: start over.
                let part = part_path.clone();
                file = blocking(move || {
                    file.set_len(0)
                        .map_err(|e| io_failure("truncate", &part, e))?;
                    Ok(file)
                })
                .await?;
                partial = Partial::new();
                progress.done.store(0, Ordering::Relaxed);
            }
            resp.content_length()
        }
        StatusCode::RANGE_NOT_SATISFIABLE if partial.len() > 0 => {
            // Everything may already be here (killed between the last byte and
            // the rename): verify what there is.
            Some(partial.len())
        }
        status => {
            forget_empty(&part_path, partial.len()).await;
            return Err(Failure::Http {
                status: status.as_u16(),
                url: redact(&url),
            });
        }
    };
    if let Some(total) = total {
        progress.total.store(total, Ordering::Relaxed);
    }
    if resp.status() != StatusCode::RANGE_NOT_SATISFIABLE {
        let (tx, rx) = mpsc::channel::<Bytes>(IN_FLIGHT);
        let progress2 = Arc::clone(progress);
        let writer = tokio::task::spawn_blocking(move || {
            let result = write_all(&mut file, &mut partial, rx, &progress2);
            (file, partial, result)
        });
        let mut network = None;
        loop {
            match resp.chunk().await {
                Ok(Some(bytes)) => {
                    if tx.send(bytes).await.is_err() {
                        break; // the writer failed; it says why
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    network = Some(Failure::Network(format!(
                        "{}: {}",
                        redact(&url),
                        chain(&e.without_url())
                    )));
                    break;
                }
            }
        }
        drop(tx);
        let (f, p, written) = writer
            .await
            .map_err(|e| Failure::Io(format!("writer task: {e}")))?;
        (file, partial) = (f, p);
        if let Err(e) = written {
            return Err(match e.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EDQUOT) => Failure::DiskFull,
                _ => io_failure("write", &part_path, e),
            });
        }
        if let Some(failure) = network {
            return Err(failure);
        }
        if let Some(total) = total
            && partial.len() != total
        {
            let got = partial.len();
            return Err(Failure::Network(format!(
                "{}: body ended at {got} of {total} bytes",
                redact(&url)
            )));
        }
    }
    verifying();
    let expected = download.sha256;
    let cache_dir = cache::dir(&place.data_dir);
    blocking(move || finish(file, partial, expected, &part_path, &final_path, &cache_dir)).await
}

/// Opens (or creates) the `.part` for appending and brings the hasher up to
/// its length by reading the prefix once.
fn open_part(place: &Place, path: &Path) -> Result<(File, Partial), Failure> {
    cache::ensure_dir(&place.data_dir, place.mode)
        .map_err(|e| io_failure("create", &cache::dir(&place.data_dir), e))?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| io_failure("open", path, e))?;
    let mut partial = Partial::new();
    let mut buf = vec![0u8; WRITE_CHUNK];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| io_failure("read", path, e))?;
        if n == 0 {
            break;
        }
        partial.absorb(&buf[..n]);
    }
    Ok((file, partial))
}

/// Checks the digest; renames into place (durably) on a match, deletes the
/// `.part` on a mismatch.
fn finish(
    file: File,
    partial: Partial,
    expected: Sha256,
    part: &Path,
    dest: &Path,
    dir: &Path,
) -> Result<(), Failure> {
    let got = partial.digest();
    if got != expected.0 {
        drop(file);
        std::fs::remove_file(part).map_err(|e| io_failure("remove", part, e))?;
        return Err(Failure::Sha256Mismatch {
            got: hex::encode(got),
        });
    }
    file.sync_all().map_err(|e| io_failure("fsync", part, e))?;
    drop(file);
    std::fs::rename(part, dest).map_err(|e| io_failure("rename", part, e))?;
    cache::fsync_dir(dir).map_err(|e| io_failure("fsync", dir, e))
}

/// `Content-Range: bytes START-END/TOTAL` → (START, TOTAL).
fn content_range(resp: &reqwest::Response) -> Option<(u64, Option<u64>)> {
    let value = resp.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let start = range.split_once('-')?.0.trim().parse().ok()?;
    Some((start, total.trim().parse().ok()))
}

/// Removes a `.part` that never got a byte, so a refused download leaves
/// nothing behind.
async fn forget_empty(part: &Path, len: u64) {
    if len == 0 {
        let _ = tokio::fs::remove_file(part).await;
    }
}

fn io_failure(op: &str, path: &Path, e: io::Error) -> Failure {
    Failure::Io(format!("cannot {op} {}: {e}", path.display()))
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Failure::Io(format!("file task: {e}")))?
}
