import Foundation

/// Reader of the IDX format of MNIST and Fashion-MNIST (big-endian header; unsigned bytes), plain or
/// gzip-compressed.
public enum IDX {
    /// The decoded content: dimensions and the raw bytes.
    public struct Array: Sendable {
        public let dimensions: [Int]
        public let bytes: [UInt8]
    }

    /// Reads an IDX file of unsigned bytes (type code 0x08).
    /// - Throws: ``DataSetError/malformed(file:reason:)`` for a bad magic number, type, or size.
    public static func read(_ path: String) throws -> Array {
        let raw: Data
        do { raw = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw DataSetError.malformed(file: path, reason: "cannot read: \(error.localizedDescription)")
        }
        let data = Gzip.isCompressed(raw) ? try Gzip.decompress(raw, file: path) : raw
        return try parse(data, file: path)
    }

    /// Parses IDX bytes.
    public static func parse(_ data: Data, file: String) throws -> Array {
        let bytes = [UInt8](data)
        guard bytes.count >= 4, bytes[0] == 0, bytes[1] == 0 else {
            throw DataSetError.malformed(file: file, reason: "no IDX magic number (expected 00 00 08 NN)")
        }
        guard bytes[2] == 0x08 else {
            throw DataSetError.malformed(file: file, reason: "element type 0x\(String(bytes[2], radix: 16)), expected 0x08 (unsigned byte)")
        }
        let rank = Int(bytes[3])
        guard rank >= 1, rank <= 4, bytes.count >= 4 + 4 * rank else {
            throw DataSetError.malformed(file: file, reason: "bad rank \(rank) or truncated header")
        }
        var dimensions: [Int] = []
        for d in 0..<rank {
            let o = 4 + 4 * d
            dimensions.append(Int(bytes[o]) << 24 | Int(bytes[o + 1]) << 16 | Int(bytes[o + 2]) << 8 | Int(bytes[o + 3]))
        }
        let count = dimensions.reduce(1, *)
        let start = 4 + 4 * rank
        guard bytes.count - start == count else {
            throw DataSetError.malformed(file: file, reason: "header says \(dimensions) (\(count) bytes), file has \(bytes.count - start)")
        }
        return Array(dimensions: dimensions, bytes: Swift.Array(bytes[start...]))
    }
}
