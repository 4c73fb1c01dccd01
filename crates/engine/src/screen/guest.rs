//! Capturing a guest's X display from inside the guest, for machines with a shell but no
//! display device (Firecracker, Cloud Hypervisor): [`CAPTURE`] runs in the guest and says
//! which XWD file holds the screen; the machine copies it out through the agent and reads it
//! with [`super::xwd`].
//!
//! The convention (docs/firecracker.md, "Screens"): the display is `:0`. Its picture comes
//! from, in this order,
//! 1. the framebuffer file of an `Xvfb :0 -fbdir DIR` (`DIR/Xvfb_screen0`), found through
//!    the server's command line in `/proc`: nothing needed in the guest beyond Xvfb;
//! 2. `xwd -root -silent -display :0` (x11-apps) into a temporary file, which is removed
//!    after the copy.
//!
//! A guest with no X server on `:0`, or with neither of the two, has no screen: the caller
//! raises `Unsupported` with [`Capture::Missing`]'s reason.

/// The X display captured.
pub const DISPLAY: &str = ":0";

/// Where the capture's answer line starts.
const TAG: &str = "ntng-screen:";

/// The guest side: one line, `ntng-screen: <kind> <rest>` (see [`parse`]). POSIX sh, `tr` and
/// `/proc` (a process whose `comm` is `Xvfb`: the shell's own `read`, no process per entry);
/// `xwd` only when there is no Xvfb framebuffer file.
pub const CAPTURE: &str = r#"d=0
if [ ! -S /tmp/.X11-unix/X$d ] && [ ! -e /tmp/.X$d-lock ]; then
  echo "ntng-screen: missing no X display found in the guest: DISPLAY :$d is not running, no /tmp/.X11-unix/X$d"; exit 0
fi
for p in /proc/[0-9]*; do
  comm=
  read -r comm 2>/dev/null <"$p/comm" || continue
  [ "$comm" = Xvfb ] || continue
  f=$(tr '\0' '\n' <"$p/cmdline" 2>/dev/null | {
    disp=:0; dir=; want=
    while IFS= read -r a; do
      if [ -n "$want" ]; then dir=$a; want=; continue; fi
      case $a in -fbdir) want=1 ;; :[0-9]*) disp=$a ;; esac
    done
    if [ -n "$dir" ] && [ "$disp" = ":$d" ]; then echo "$dir"; fi
  }) || f=
  if [ -n "$f" ]; then
    case $f in /*) ;; *) f=$p/cwd/$f ;; esac
    if [ -r "$f/Xvfb_screen0" ]; then echo "ntng-screen: file $f/Xvfb_screen0"; exit 0; fi
  fi
done
if command -v xwd >/dev/null 2>&1; then
  t=$(mktemp /tmp/ntng-screen.XXXXXX) || exit 1
  if e=$(xwd -root -silent -display :$d 2>&1 >"$t"); then echo "ntng-screen: temp $t"; exit 0; fi
  rm -f "$t"; echo "ntng-screen: failed xwd -root -display :$d failed: $e"; exit 0
fi
echo "ntng-screen: missing the X display :$d runs, but the guest has neither an Xvfb with -fbdir nor xwd (x11-apps) to capture it"
"#;

/// What [`CAPTURE`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capture {
    /// The XWD file at this guest path, to be left there (Xvfb's framebuffer).
    File(String),
    /// A temporary XWD file at this guest path, to be removed after the copy.
    Temporary(String),
    /// There is nothing to capture: why (the end of an `Unsupported` message).
    Missing(String),
    /// Capturing failed: why.
    Failed(String),
}

/// Reads [`CAPTURE`]'s output; `None` when it has no answer line.
pub fn parse(output: &str) -> Option<Capture> {
    let line = output.lines().rev().find_map(|l| l.strip_prefix(TAG))?;
    let (kind, rest) = line.trim_start().split_once(' ')?;
    let rest = rest.to_string();
    match kind {
        "file" => Some(Capture::File(rest)),
        "temp" => Some(Capture::Temporary(rest)),
        "missing" => Some(Capture::Missing(rest)),
        "failed" => Some(Capture::Failed(rest)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn answers_parse() {
        assert_eq!(
            parse("noise\nntng-screen: file /run/x/Xvfb_screen0\n"),
            Some(Capture::File("/run/x/Xvfb_screen0".into()))
        );
        assert_eq!(
            parse("ntng-screen: temp /tmp/ntng-screen.ab"),
            Some(Capture::Temporary("/tmp/ntng-screen.ab".into()))
        );
        assert_eq!(
            parse("ntng-screen: missing no X display"),
            Some(Capture::Missing("no X display".into()))
        );
        assert_eq!(
            parse("ntng-screen: failed xwd: oops"),
            Some(Capture::Failed("xwd: oops".into()))
        );
        assert_eq!(parse(""), None);
        assert_eq!(parse("ntng-screen: what x"), None);
        assert_eq!(parse("ntng-screen: file"), None);
    }

    /// The script runs under the agent's preamble (`set -euo pipefail`), and on a host whose
    /// display :0 is not running says so.
    #[test]
    fn the_script_runs_under_the_agents_preamble() {
        let script = format!("{}{CAPTURE}", crate::transport::shell::VM_PREAMBLE);
        let out = Command::new("bash").arg("-c").arg(script).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        if std::path::Path::new("/tmp/.X11-unix/X0").exists()
            || std::path::Path::new("/tmp/.X0-lock").exists()
        {
            assert!(parse(&text).is_some(), "{text}");
        } else {
            assert_eq!(
                parse(&text),
                Some(Capture::Missing(
                    "no X display found in the guest: DISPLAY :0 is not running, no /tmp/.X11-unix/X0"
                        .into()
                ))
            );
        }
    }
}
