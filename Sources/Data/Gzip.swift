import Foundation
import CZlib

/// gzip and zlib decompression through the system zlib.
enum Gzip {
    /// Whether `bytes` start with the gzip magic number.
    static func isCompressed(_ bytes: Data) -> Bool {
        bytes.count >= 2 && bytes[bytes.startIndex] == 0x1f && bytes[bytes.startIndex + 1] == 0x8b
    }

    /// Decompresses a gzip (or zlib) stream; concatenated gzip members are read in full.
    /// - Throws: ``DataSetError/malformed(file:reason:)`` when the stream is corrupt or truncated.
    static func decompress(_ compressed: Data, file: String) throws -> Data {
        var output = Data()
        var stream = z_stream()
        // 15 + 32: maximum window, detect gzip or zlib headers automatically.
        guard inflateInit2_(&stream, 15 + 32, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw DataSetError.malformed(file: file, reason: "zlib could not start")
        }
        defer { inflateEnd(&stream) }
        let chunk = 1 << 20
        var buffer = [UInt8](repeating: 0, count: chunk)
        try compressed.withUnsafeBytes { (input: UnsafeRawBufferPointer) in
            guard let base = input.bindMemory(to: Bytef.self).baseAddress else { return }
            stream.next_in = UnsafeMutablePointer(mutating: base)
            stream.avail_in = uInt(input.count)
            while true {
                let status = buffer.withUnsafeMutableBufferPointer { out -> Int32 in
                    stream.next_out = out.baseAddress
                    stream.avail_out = uInt(chunk)
                    return inflate(&stream, Z_NO_FLUSH)
                }
                output.append(contentsOf: buffer[0..<(chunk - Int(stream.avail_out))])
                if status == Z_STREAM_END {
                    // Another gzip member may follow.
                    if stream.avail_in == 0 { break }
                    inflateReset(&stream)
                    continue
                }
                guard status == Z_OK else {
                    throw DataSetError.malformed(file: file, reason: "corrupt gzip data (zlib status \(status))")
                }
                if stream.avail_in == 0 && stream.avail_out != 0 {
                    throw DataSetError.malformed(file: file, reason: "gzip data ends early (truncated file?)")
                }
            }
        }
        return output
    }
}
