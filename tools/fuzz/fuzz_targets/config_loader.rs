//! Fuzzes the node configuration loader: any text (and any `--set` override built from it)
//! is either a validated configuration or a typed error - never a panic. A configuration
//! that loads prints to TOML that loads to the same configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use presage_server::node::config::NodeConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (file, over) = text.split_once('\u{0}').unwrap_or((text, ""));
    let overrides: Vec<String> = over.lines().map(str::to_string).collect();
    if let Ok(loaded) = NodeConfig::parse(file, &overrides) {
        let again = NodeConfig::parse(&loaded.config.to_toml(), &[]).expect("printed config loads");
        assert_eq!(again.config, loaded.config);
    }
});
