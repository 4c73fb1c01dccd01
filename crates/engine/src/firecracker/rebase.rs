//! Builds a diff snapshot's complete memory file, as Firecracker's `rebase-snap` tool does: a
//! diff memory file is sparse, holding only the pages dirtied since the previous snapshot at
//! their offsets; laid over the previous snapshot's complete memory file, its data extents
//! (found with `lseek(SEEK_DATA/SEEK_HOLE)`) give the complete memory at the diff snapshot.
//! The base is copied first, with a reflink where the filesystem has one (Btrfs, XFS), else
//! in full, so it stays as it was.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Why a complete memory file could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RebaseError {
    /// The previous snapshot's complete memory file is not there.
    #[error("the base memory file {} is gone", .0.display())]
    MissingBase(PathBuf),
    /// Reading or writing one of the files failed.
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RebaseError + 'a {
    move |source| RebaseError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `out`: `base` with the data extents of the sparse `diff` laid over it at their
/// offsets (a diff longer than the base extends it). `out` is replaced; `base` and `diff`
/// are left as they were. Returns how many bytes of the diff were copied.
pub fn rebase(base: &Path, diff: &Path, out: &Path) -> Result<u64, RebaseError> {
    if !base.is_file() {
        return Err(RebaseError::MissingBase(base.to_path_buf()));
    }
    let _ = std::fs::remove_file(out);
    copy_base(base, out)?;
    let target = OpenOptions::new()
        .write(true)
        .open(out)
        .map_err(io_err("cannot open", out))?;
    let source = File::open(diff).map_err(io_err("cannot open the diff memory file", diff))?;
    let len = source
        .metadata()
        .map_err(io_err("cannot read the size of", diff))?
        .len();
    let mut copied = 0;
    for (start, end) in
        data_extents(&source, len).map_err(io_err("cannot find the data in", diff))?
    {
        copy_range(&source, &target, start, end, diff, out)?;
        copied += end - start;
    }
    if target
        .metadata()
        .map_err(io_err("cannot read the size of", out))?
        .len()
        < len
    {
        target.set_len(len).map_err(io_err("cannot extend", out))?;
    }
    target.sync_all().map_err(io_err("cannot write", out))?;
    Ok(copied)
}

/// `base` to `out`: a reflink (`FICLONE`) where the filesystem shares extents, else a copy.
fn copy_base(base: &Path, out: &Path) -> Result<(), RebaseError> {
    let src = File::open(base).map_err(io_err("cannot open the base memory file", base))?;
    let dst = File::create(out).map_err(io_err("cannot create", out))?;
    // SAFETY: FICLONE takes the source descriptor as its argument; both files are open.
    let cloned = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) } == 0;
    if !cloned {
        drop(dst);
        std::fs::copy(base, out).map_err(io_err("cannot copy the base memory file to", out))?;
    }
    Ok(())
}

/// The `[start, end)` ranges of `file` (of `len` bytes) that hold data, not holes.
fn data_extents(file: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut extents = Vec::new();
    let mut offset = 0u64;
    while offset < len {
        let start = match seek(fd, offset, libc::SEEK_DATA) {
            Ok(start) => start,
            // ENXIO: no data at or after `offset`.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
            Err(e) => return Err(e),
        };
        let end = seek(fd, start, libc::SEEK_HOLE)?.min(len);
        extents.push((start, end));
        offset = end;
    }
    Ok(extents)
}

fn seek(fd: i32, offset: u64, whence: i32) -> io::Result<u64> {
    // SAFETY: lseek on an open descriptor; only its position changes (reads use pread).
    let at = unsafe { libc::lseek(fd, offset as libc::off_t, whence) };
    if at < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(at as u64)
    }
}

/// Copies `[start, end)` of `source` to the same offsets of `target`.
fn copy_range(
    source: &File,
    target: &File,
    start: u64,
    end: u64,
    diff: &Path,
    out: &Path,
) -> Result<(), RebaseError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = start;
    while at < end {
        let want = ((end - at) as usize).min(buf.len());
        let n = source
            .read_at(&mut buf[..want], at)
            .map_err(io_err("cannot read", diff))?;
        if n == 0 {
            break;
        }
        target
            .write_all_at(&buf[..n], at)
            .map_err(io_err("cannot write", out))?;
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::test_dir::TestDir;

    /// A sparse file of `len` bytes with `data` written at each offset.
    fn sparse(path: &Path, len: u64, data: &[(u64, &[u8])]) {
        let f = File::create(path).unwrap();
        f.set_len(len).unwrap();
        for (at, bytes) in data {
            f.write_all_at(bytes, *at).unwrap();
        }
    }

    /// What the merge must give: the filesystem keeps data in whole blocks, so each block
    /// of the diff that `data` touches (all of it, zeros too, as a dirty guest page is
    /// written whole) replaces the base's; the rest is the base's, zeros past its end.
    fn expected(base: &[u8], diff: &Path, data: &[(u64, &[u8])]) -> Vec<u8> {
        use std::os::unix::fs::MetadataExt;
        let block = std::fs::metadata(diff).unwrap().blksize() as usize;
        let diff_bytes = std::fs::read(diff).unwrap();
        let mut out = base.to_vec();
        out.resize(out.len().max(diff_bytes.len()), 0);
        for (at, bytes) in data {
            let first = *at as usize / block * block;
            let end = (*at as usize + bytes.len()).div_ceil(block) * block;
            let end = end.min(diff_bytes.len());
            out[first..end].copy_from_slice(&diff_bytes[first..end]);
        }
        out
    }

    const PAGE: u64 = 4096;

    #[test]
    fn the_diff_data_lands_on_the_base_at_its_offsets() {
        let dir = TestDir::new();
        let (base, diff, out) = (
            dir.path().join("base"),
            dir.path().join("diff"),
            dir.path().join("out"),
        );
        let base_bytes: Vec<u8> = (0..64 * PAGE).map(|i| (i % 251) as u8).collect();
        std::fs::write(&base, &base_bytes).unwrap();
        // data at page offsets, in the middle, and an odd-sized piece at an odd offset
        let data: [(u64, &[u8]); 3] = [
            (0, &[0xAA; 4096]),
            (17 * PAGE, &[0xBB; 3 * 4096]),
            (40 * PAGE + 123, b"odd offset, odd length"),
        ];
        sparse(&diff, 64 * PAGE, &data);
        let copied = rebase(&base, &diff, &out).unwrap();
        assert!(copied >= 4096 + 3 * 4096 + 22, "{copied}");
        assert!(copied < 64 * PAGE, "the holes were copied too: {copied}");
        let got = std::fs::read(&out).unwrap();
        assert_eq!(got, expected(&base_bytes, &diff, &data));
        assert_eq!(
            &got[40 * PAGE as usize + 123..][..22],
            b"odd offset, odd length"
        );
        // a page the diff does not hold is the base's
        assert_eq!(
            got[30 * PAGE as usize..31 * PAGE as usize],
            base_bytes[30 * PAGE as usize..31 * PAGE as usize]
        );
        // the base stays as it was
        assert_eq!(std::fs::read(&base).unwrap(), base_bytes);
    }

    #[test]
    fn a_diff_longer_than_the_base_extends_it() {
        let dir = TestDir::new();
        let (base, diff, out) = (
            dir.path().join("base"),
            dir.path().join("diff"),
            dir.path().join("out"),
        );
        let base_bytes = vec![7u8; 2 * PAGE as usize];
        std::fs::write(&base, &base_bytes).unwrap();
        let data: [(u64, &[u8]); 1] = [(5 * PAGE, &[9u8; 100])];
        sparse(&diff, 8 * PAGE, &data);
        rebase(&base, &diff, &out).unwrap();
        let got = std::fs::read(&out).unwrap();
        assert_eq!(got.len(), 8 * PAGE as usize);
        assert_eq!(got, expected(&base_bytes, &diff, &data));
        assert_eq!(got[..2 * PAGE as usize], base_bytes[..]);
    }

    #[test]
    fn an_empty_diff_gives_the_base() {
        let dir = TestDir::new();
        let (base, diff, out) = (
            dir.path().join("base"),
            dir.path().join("diff"),
            dir.path().join("out"),
        );
        let base_bytes: Vec<u8> = (0..3 * PAGE).map(|i| (i % 13) as u8).collect();
        std::fs::write(&base, &base_bytes).unwrap();
        sparse(&diff, 3 * PAGE, &[]);
        assert_eq!(rebase(&base, &diff, &out).unwrap(), 0);
        assert_eq!(std::fs::read(&out).unwrap(), base_bytes);
        std::fs::write(&diff, b"").unwrap();
        assert_eq!(rebase(&base, &diff, &out).unwrap(), 0);
        assert_eq!(std::fs::read(&out).unwrap(), base_bytes);
    }

    #[test]
    fn the_output_is_replaced_not_appended_to() {
        let dir = TestDir::new();
        let (base, diff, out) = (
            dir.path().join("base"),
            dir.path().join("diff"),
            dir.path().join("out"),
        );
        let base_bytes = vec![1u8; 4 * PAGE as usize];
        std::fs::write(&base, &base_bytes).unwrap();
        std::fs::write(&out, vec![5u8; 9 * PAGE as usize]).unwrap();
        let data: [(u64, &[u8]); 1] = [(2 * PAGE + 2, b"xy")];
        sparse(&diff, 4 * PAGE, &data);
        rebase(&base, &diff, &out).unwrap();
        assert_eq!(
            std::fs::read(&out).unwrap(),
            expected(&base_bytes, &diff, &data)
        );
    }

    #[test]
    fn a_missing_base_or_diff_is_named() {
        let dir = TestDir::new();
        let (base, diff, out) = (
            dir.path().join("base"),
            dir.path().join("diff"),
            dir.path().join("out"),
        );
        sparse(&diff, PAGE, &[]);
        let e = rebase(&base, &diff, &out).unwrap_err();
        assert!(
            matches!(&e, RebaseError::MissingBase(p) if p == &base),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!("the base memory file {} is gone", base.display())
        );
        std::fs::write(&base, b"x").unwrap();
        std::fs::remove_file(&diff).unwrap();
        let e = rebase(&base, &diff, &out).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "cannot open the diff memory file {}: ",
                diff.display()
            )),
            "{e}"
        );
    }
}
