import Tensors

/// Derives independent, reproducible random streams from the run's seed and a position, so that every
/// random choice depends only on (seed, purpose, epoch, step or sample) — not on thread timing or on what
/// ran before.
public enum RandomStream {
    /// What a stream is for; keeps streams of different purposes apart.
    public enum Purpose: UInt64, Sendable {
        case shuffle = 1, augment = 2, classSampler = 3, initialisation = 4, contrast = 5
    }

    /// The generator for `purpose` at the given coordinates.
    public static func generator(seed: UInt64, _ purpose: Purpose, _ coordinates: Int...) -> SeededGenerator {
        var h = mix(seed ^ 0x5EED_C0DE_0000_0000 &+ purpose.rawValue)
        for c in coordinates { h = mix(h ^ UInt64(bitPattern: Int64(c)) &+ 0x9E37_79B9_7F4A_7C15) }
        return SeededGenerator(seed: h)
    }

    /// SplitMix64's finaliser: a bijective 64-bit mix.
    static func mix(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
