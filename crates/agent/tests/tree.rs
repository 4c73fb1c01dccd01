//! PUT and GET of trees against the agent as a local process.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use agent_protocol::{Entry, EntryKind, Get, Kind, Put};
use support::{Agent, Client};

fn uid() -> u32 {
    unsafe { libc::geteuid() }
}

fn gid() -> u32 {
    unsafe { libc::getegid() }
}

fn entry(path: &str, kind: EntryKind, mode: u32, size: u64, target: Option<&str>) -> Entry {
    Entry {
        path: path.into(),
        kind,
        mode,
        uid: uid(),
        gid: gid(),
        size,
        target: target.map(Into::into),
    }
}

fn dir(path: &str, mode: u32) -> (Entry, Vec<u8>) {
    (entry(path, EntryKind::Dir, mode, 0, None), Vec::new())
}

fn file(path: &str, mode: u32, content: &[u8]) -> (Entry, Vec<u8>) {
    (
        entry(path, EntryKind::File, mode, content.len() as u64, None),
        content.to_vec(),
    )
}

fn link(path: &str, target: &str) -> (Entry, Vec<u8>) {
    (
        entry(path, EntryKind::Symlink, 0o777, 0, Some(target)),
        Vec::new(),
    )
}

fn put(c: &mut Client, path: &Path, tree: &[(Entry, Vec<u8>)]) -> Result<(), String> {
    c.send_json(
        Kind::Put,
        &Put {
            path: path.to_str().unwrap().into(),
        },
    );
    c.send_tree(tree);
    let frame = c.recv().unwrap();
    match frame.kind {
        Kind::Done => Ok(()),
        Kind::Error => Err(frame.json::<agent_protocol::Failure>().unwrap().message),
        other => panic!("PUT answered {other}"),
    }
}

fn get(c: &mut Client, path: &Path) -> Result<Vec<(Entry, Vec<u8>)>, String> {
    c.send_json(
        Kind::Get,
        &Get {
            path: path.to_str().unwrap().into(),
        },
    );
    c.recv_tree()
}

#[test]
fn a_tree_put_then_got_is_the_same_tree_with_links_kept_as_links() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let big: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    let tree = vec![
        dir("", 0o755),
        file("big", 0o600, &big),
        file("f", 0o640, b"content\0\xff"),
        link("out", "/etc/passwd"),
        dir("sub", 0o700),
        file("sub/empty", 0o644, b""),
        link("sub/up", "../f"),
    ];
    // Parents of the destination are created.
    let dest = agent.dir.path().join("a/b/tree");
    put(&mut c, &dest, &tree).unwrap();

    let f = dest.join("f");
    assert_eq!(fs::read(&f).unwrap(), b"content\0\xff");
    assert_eq!(
        fs::metadata(&f).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    assert_eq!(
        fs::metadata(dest.join("sub")).unwrap().permissions().mode() & 0o7777,
        0o700
    );
    let out = fs::symlink_metadata(dest.join("out")).unwrap();
    assert!(out.file_type().is_symlink());
    assert_eq!(
        fs::read_link(dest.join("out")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(fs::read(dest.join("big")).unwrap(), big);

    let got = get(&mut c, &dest).unwrap();
    assert_eq!(got, tree, "GET returns what PUT wrote, in name order");
}

/// As root the entries' owners are applied; an unprivileged agent keeps its own (EPERM is
/// not an error then).
#[test]
fn owners_are_applied_when_the_agent_may() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let root = uid() == 0;
    let expect = |want: u32, own: u32| if root { want } else { own };
    let mut f = file("", 0o644, b"x");
    f.0.uid = 1234;
    f.0.gid = 4321;
    let dest = agent.dir.path().join("owned");
    put(&mut c, &dest, &[f]).unwrap();
    let meta = fs::metadata(&dest).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (expect(1234, uid()), expect(4321, gid()))
    );
    let mut l = link("", "/nowhere");
    l.0.uid = 77;
    let dest = agent.dir.path().join("owned-link");
    put(&mut c, &dest, &[l]).unwrap();
    assert_eq!(
        fs::symlink_metadata(&dest).unwrap().uid(),
        expect(77, uid())
    );
}

#[test]
fn a_single_file_is_a_tree_of_one_root_entry() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let dest = agent.dir.path().join("single.txt");
    let tree = vec![file("", 0o604, b"just me\n")];
    put(&mut c, &dest, &tree).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), b"just me\n");
    assert_eq!(get(&mut c, &dest).unwrap(), tree);
    // Putting it again replaces the content.
    put(&mut c, &dest, &[file("", 0o604, b"again")]).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), b"again");
}

#[test]
fn a_get_of_a_symlink_is_the_link_not_its_target() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let l = agent.dir.path().join("l");
    std::os::unix::fs::symlink("/etc", &l).unwrap();
    let got = get(&mut c, &l).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.kind, EntryKind::Symlink);
    assert_eq!(got[0].0.target.as_deref(), Some("/etc"));
}

#[test]
fn bad_entry_paths_are_refused_and_the_stream_stays_in_step() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let dest = agent.dir.path().join("d");
    for bad in ["../x", "/abs", "a//b", "./a"] {
        let tree = vec![dir("", 0o755), file(bad, 0o644, b"escaped")];
        let err = put(&mut c, &dest, &tree).unwrap_err();
        assert!(err.contains(bad), "{err}");
        // The connection is usable: the rest of the tree was read.
        c.ping();
    }
    assert!(!agent.dir.path().join("x").exists());
    assert!(!Path::new("/abs").exists());
}

#[test]
fn a_planted_symlink_in_the_destination_is_not_written_through() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let outside = agent.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("victim"), b"original").unwrap();
    let dest = agent.dir.path().join("dest");
    fs::create_dir(&dest).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("evil")).unwrap();
    std::os::unix::fs::symlink(outside.join("victim"), dest.join("evil-file")).unwrap();

    // Into a directory through the link.
    let tree = vec![
        dir("", 0o755),
        dir("evil", 0o755),
        file("evil/new", 0o644, b"x"),
    ];
    let err = put(&mut c, &dest, &tree).unwrap_err();
    assert!(err.contains("symlink"), "{err}");
    // A file entry where a link to a file is.
    let tree = vec![dir("", 0o755), file("evil-file", 0o644, b"overwritten")];
    let err = put(&mut c, &dest, &tree).unwrap_err();
    assert!(err.contains("evil-file"), "{err}");
    // A child entry below a link the tree itself just made.
    let tree = vec![
        dir("", 0o755),
        link("made", outside.to_str().unwrap()),
        file("made/new2", 0o644, b"x"),
    ];
    let err = put(&mut c, &dest, &tree).unwrap_err();
    assert!(err.contains("made/new2"), "{err}");

    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"original");
    let names: Vec<_> = fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["victim"]);
}

#[test]
fn a_tree_must_start_at_its_root_and_match_its_sizes() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let dest = agent.dir.path().join("r");
    let err = put(&mut c, &dest, &[file("f", 0o644, b"x")]).unwrap_err();
    assert!(err.contains("root"), "{err}");
    let mut short = file("", 0o644, b"abc");
    short.0.size = 10;
    let err = put(&mut c, &dest, &[short]).unwrap_err();
    assert!(err.contains("short"), "{err}");
    let err = put(&mut c, &dest, &[]).unwrap_err();
    assert!(err.contains("no entries"), "{err}");
    c.ping();
}

#[test]
fn a_get_of_a_missing_path_is_an_error_and_the_connection_goes_on() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let err = get(&mut c, &agent.dir.path().join("missing")).unwrap_err();
    assert!(
        err.contains("missing") && err.contains("No such file"),
        "{err}"
    );
    let err = get(&mut c, Path::new("relative")).unwrap_err();
    assert!(err.contains("absolute"), "{err}");
    assert_eq!(c.run("echo fine").stdout, b"fine\n");
}

#[test]
fn a_name_that_is_not_utf8_fails_the_get_and_the_connection_goes_on() {
    use std::os::unix::ffi::OsStrExt;
    let agent = Agent::start();
    let mut c = agent.connect();
    let src = agent.dir.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join(std::ffi::OsStr::from_bytes(b"bad\xff")), b"x").unwrap();
    let err = get(&mut c, &src).unwrap_err();
    assert!(err.contains("not UTF-8"), "{err}");
    c.ping();
}

#[test]
fn special_files_inside_a_tree_are_left_out() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let src = agent.dir.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    let fifo = std::ffi::CString::new(src.join("fifo").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let got = get(&mut c, &src).unwrap();
    let paths: Vec<&str> = got.iter().map(|(e, _)| e.path.as_str()).collect();
    assert_eq!(paths, vec!["", "a"]);
}
