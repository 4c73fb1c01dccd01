//! Property tests of `systemctl show`'s output as the guest prints it: any text gives
//! properties with non-empty keys, never a panic; `key=value` lines read back exactly.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::parse_show;
use crate::fuzz;

#[test]
fn show_output_gives_its_key_value_lines() {
    let props = proptest::collection::btree_map("[A-Za-z][A-Za-z0-9]{0,10}", "[ -~]{0,24}", 0..8);
    let noise = proptest::collection::vec("[^=\n]{0,20}", 0..4);
    proptest!(fuzz::config(512), |(props in props, noise in noise, any_text in any::<String>())| {
        let mut text = String::new();
        for (k, v) in &props {
            text.push_str(&format!("{k}={v}\n"));
        }
        for n in &noise {
            text.push_str(&format!("{n}\n"));
        }
        prop_assert_eq!(parse_show(&text), props);
        let parsed: BTreeMap<String, String> = parse_show(&any_text);
        for (k, v) in &parsed {
            prop_assert!(!k.is_empty() && !k.contains(['=', '\n']) && !v.contains('\n'));
        }
    });
}
