extension CohortConfiguration {
    /// Every setting that shapes the training, one `key=value` line each, sorted by key: the text the
    /// configuration digest is the SHA-256 of (`docs/protocol.md` specifies it for other implementations).
    ///
    /// Keys are the YAML key paths (peers as `peers.<index>.model`); every value is the effective one,
    /// defaults included; numbers of the float settings print as the shortest decimal that reads back
    /// as the same 32-bit float; absent optional parts (no teacher, no KD) have no lines; an absent
    /// limit prints `none`. The keys marked outside the digest in ``ConfigurationSchema`` (the output and
    /// data directories, the teacher's checkpoint path, the network and security settings,
    /// `checkpoint_every`, `evaluation_every`) are left out: they differ between hosts, or do not change the
    /// weights.
    public var canonicalSettings: String { ConfigurationSchema.canonicalSettings(self) }
}
