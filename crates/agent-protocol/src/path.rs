/// Why an entry path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("entry path {0:?} is absolute")]
    Absolute(String),
    #[error("entry path {0:?} has an empty component")]
    EmptyComponent(String),
    #[error("entry path {0:?} has a '..' component")]
    DotDot(String),
    #[error("entry path {0:?} has a '.' component")]
    Dot(String),
    #[error("entry path {0:?} contains a NUL byte")]
    Nul(String),
}

/// Checks a tree entry's path and returns its components: relative, no empty, `.` or `..`
/// component, no NUL; "" is the root (no components). Both the agent (PUT) and the host
/// (writing a GET's tree) refuse entries this refuses.
pub fn validate_relative_path(path: &str) -> Result<Vec<&str>, PathError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let bad = |f: fn(String) -> PathError| Err(f(path.to_owned()));
    if path.contains('\0') {
        return bad(PathError::Nul);
    }
    if path.starts_with('/') {
        return bad(PathError::Absolute);
    }
    let parts: Vec<&str> = path.split('/').collect();
    for part in &parts {
        match *part {
            "" => return bad(PathError::EmptyComponent),
            "." => return bad(PathError::Dot),
            ".." => return bad(PathError::DotDot),
            _ => {}
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_relative_paths_pass() {
        assert_eq!(validate_relative_path("").unwrap(), Vec::<&str>::new());
        assert_eq!(validate_relative_path("a").unwrap(), vec!["a"]);
        assert_eq!(
            validate_relative_path("a/b c/.hidden/..x").unwrap(),
            vec!["a", "b c", ".hidden", "..x"]
        );
    }

    #[test]
    fn escaping_or_ambiguous_paths_are_refused() {
        assert_eq!(
            validate_relative_path("/etc"),
            Err(PathError::Absolute("/etc".into()))
        );
        assert_eq!(
            validate_relative_path("../x"),
            Err(PathError::DotDot("../x".into()))
        );
        assert_eq!(
            validate_relative_path("a/../../x"),
            Err(PathError::DotDot("a/../../x".into()))
        );
        assert_eq!(
            validate_relative_path("a//b"),
            Err(PathError::EmptyComponent("a//b".into()))
        );
        assert_eq!(
            validate_relative_path("a/"),
            Err(PathError::EmptyComponent("a/".into()))
        );
        assert_eq!(
            validate_relative_path("./a"),
            Err(PathError::Dot("./a".into()))
        );
        assert_eq!(
            validate_relative_path("a\0b"),
            Err(PathError::Nul("a\0b".into()))
        );
    }
}
