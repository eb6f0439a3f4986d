import CZlib

/// CRC-32 (IEEE 802.3), the checksum Cohort writes into its checkpoints' metadata and state files, computed by
/// zlib's `crc32` (already linked for the gzip-compressed data sets; it is table-driven with word-at-a-time
/// folding, several times faster than a byte loop).
public enum CRC32 {
    /// The checksum of `bytes`, continuing from `crc` (0 to start).
    public static func checksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
        guard var base = bytes.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return crc }
        var value = UInt(crc)
        var remaining = bytes.count
        // zlib takes a 32-bit length; feed larger buffers in pieces.
        while remaining > 0 {
            let piece = min(remaining, 1 << 30)
            value = crc32(value, base, UInt32(piece))
            base += piece
            remaining -= piece
        }
        return UInt32(truncatingIfNeeded: value)
    }
}
