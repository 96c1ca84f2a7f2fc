//! The crate does not replace an application's rustls crypto provider. (Its own test binary:
//! the provider is process-wide.) redis-rs builds its rustls config from the process default
//! and takes no provider, so the crate installs ring's only when none is installed.

#![cfg(feature = "tls")]

use tfra_redis::{RedisConfig, TableBuilder};

#[test]
fn an_application_provider_stays_in_place() {
    // The application's choice, recognisable by having a single cipher suite.
    let mut mine = rustls::crypto::ring::default_provider();
    mine.cipher_suites.truncate(1);
    mine.install_default().unwrap();

    // A TLS connection attempt (nothing listens on port 1) goes through the crate's TLS setup.
    let mut config = RedisConfig::standalone("127.0.0.1", 1);
    config.redis_tls = true;
    let err = TableBuilder::new(&config)
        .name("t")
        .dim(1)
        .open()
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");

    let now = rustls::crypto::CryptoProvider::get_default().expect("a provider");
    assert_eq!(
        now.cipher_suites.len(),
        1,
        "the application's provider was replaced"
    );
}
