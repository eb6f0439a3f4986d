import Foundation
import Tensors

/// A file in the Hugging Face safetensors format: an 8-byte little-endian header length, a JSON header
/// (`{"name": {"dtype", "shape", "data_offsets"}, "__metadata__": {string: string}}`), then the tensors'
/// little-endian bytes back to back.
///
/// Cohort writes `F32` (weights) and `I64` (integer buffers such as `num_batches_tracked`); it reads
/// `F32`, `F64`, `F16`, `BF16` (converted to `Float`) and `I64`, `I32` (as `Int`), which covers state
/// dicts saved from PyTorch with `safetensors.torch.save_file`.
public struct SafeTensors: Sendable {
    /// Element types.
    public enum DType: String, Sendable {
        case f32 = "F32", f64 = "F64", f16 = "F16", bf16 = "BF16", i64 = "I64", i32 = "I32"

        var size: Int {
            switch self {
            case .f64, .i64: 8
            case .f32, .i32: 4
            case .f16, .bf16: 2
            }
        }
        /// A floating-point type (read as `Float`).
        public var isFloat: Bool { self != .i64 && self != .i32 }
    }

    /// One named tensor: type, shape and raw little-endian bytes.
    public struct Entry: Sendable {
        public let dtype: DType
        public let shape: [Int]
        public let bytes: Data
        public var count: Int { shape.reduce(1, *) }
    }

    /// String metadata (`__metadata__`).
    public var metadata: [String: String] = [:]
    /// Names in file order.
    public private(set) var names: [String] = []
    private var entries: [String: Entry] = [:]

    public init(metadata: [String: String] = [:]) { self.metadata = metadata }

    public func entry(_ name: String) -> Entry? { entries[name] }

    /// Adds (or replaces) a `F32` tensor.
    public mutating func add(_ name: String, floats tensor: Tensor) {
        let bytes = Data(bytes: tensor.data, count: tensor.count * 4)
        put(name, Entry(dtype: .f32, shape: tensor.shape, bytes: bytes))
    }

    /// Adds (or replaces) an `I64` tensor of `shape`.
    public mutating func add(_ name: String, integers: [Int], shape: [Int]) {
        precondition(integers.count == shape.reduce(1, *))
        var values = integers.map { Int64($0).littleEndian }
        let bytes = Data(bytes: &values, count: values.count * 8)
        put(name, Entry(dtype: .i64, shape: shape, bytes: bytes))
    }

    private mutating func put(_ name: String, _ entry: Entry) {
        if entries[name] == nil { names.append(name) }
        entries[name] = entry
    }

    /// The float tensor `name`, converting from `F64`, `F16` or `BF16`.
    /// - Throws: ``SafeTensorsError`` when absent or not a float type.
    public func floats(_ name: String) throws -> Tensor {
        guard let e = entries[name] else { throw SafeTensorsError.missing(name) }
        guard e.dtype.isFloat else { throw SafeTensorsError.wrongType(name: name, found: e.dtype.rawValue, expected: "a float type") }
        let out = Tensor(uninitializedShape: e.shape)
        let o = out.data
        e.bytes.withUnsafeBytes { raw in
            for i in 0..<e.count {
                switch e.dtype {
                case .f32: o[i] = Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
                case .f64: o[i] = Float(Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self))))
                case .bf16:
                    let b = UInt32(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
                    o[i] = Float(bitPattern: b << 16)
                case .f16:
                    #if arch(arm64) || arch(x86_64)
                    o[i] = Float(Float16(bitPattern: UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))))
                    #endif
                case .i64, .i32: break
                }
            }
        }
        return out
    }

    /// The integer tensor `name` as `Int`s.
    public func integers(_ name: String) throws -> [Int] {
        guard let e = entries[name] else { throw SafeTensorsError.missing(name) }
        return try e.bytes.withUnsafeBytes { raw in
            switch e.dtype {
            case .i64: return (0..<e.count).map { Int(Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self))) }
            case .i32: return (0..<e.count).map { Int(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self))) }
            default: throw SafeTensorsError.wrongType(name: name, found: e.dtype.rawValue, expected: "I64 or I32")
            }
        }
    }

    // MARK: Encoding

    /// The file's bytes. The header lists the metadata first and the tensors in insertion order, and is
    /// padded with spaces to a multiple of 8 bytes, as the reference implementation does.
    ///
    /// - Parameter checksum: also record the CRC-32 of the tensor data in the metadata (`crc32`, 8 hex
    ///   digits), which ``decode(_:)`` then verifies: a flipped bit in a checkpoint is detected, not loaded.
    public func encoded(checksum: Bool = false) -> Data {
        var header = "{"
        var parts: [String] = []
        var metadata = self.metadata
        if checksum {
            var crc: UInt32 = 0
            for name in names { entries[name]!.bytes.withUnsafeBytes { crc = CRC32.checksum($0, continuing: crc) } }
            metadata[Self.checksumKey] = String(format: "%08x", crc)
        }
        if !metadata.isEmpty {
            let fields = metadata.keys.sorted().map { "\(jsonString($0)):\(jsonString(metadata[$0]!))" }
            parts.append("\"__metadata__\":{\(fields.joined(separator: ","))}")
        }
        var offset = 0
        for name in names {
            let e = entries[name]!
            parts.append("\(jsonString(name)):{\"dtype\":\"\(e.dtype.rawValue)\",\"shape\":[\(e.shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(offset),\(offset + e.bytes.count)]}")
            offset += e.bytes.count
        }
        header += parts.joined(separator: ",") + "}"
        var headerBytes = Data(header.utf8)
        while headerBytes.count % 8 != 0 { headerBytes.append(0x20) }
        var out = Data()
        var length = UInt64(headerBytes.count).littleEndian
        out.append(Data(bytes: &length, count: 8))
        out.append(headerBytes)
        for name in names { out.append(entries[name]!.bytes) }
        return out
    }

    private func jsonString(_ s: String) -> String {
        var r = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": r += "\\\""
            case "\\": r += "\\\\"
            case "\n": r += "\\n"
            case "\r": r += "\\r"
            case "\t": r += "\\t"
            default:
                if u.value < 0x20 { r += String(format: "\\u%04x", u.value) } else { r.unicodeScalars.append(u) }
            }
        }
        return r + "\""
    }

    // MARK: Decoding

    /// Parses a safetensors file's bytes.
    /// - Throws: ``SafeTensorsError/malformed(_:)`` naming what is wrong.
    public static func decode(_ data: Data) throws -> SafeTensors {
        guard data.count >= 8 else { throw SafeTensorsError.malformed("file shorter than the 8-byte header length") }
        let length = data.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard length <= 100_000_000, 8 + Int(length) <= data.count else {
            throw SafeTensorsError.malformed("header length \(length) exceeds the file (\(data.count) bytes)")
        }
        let headerData = data.subdata(in: 8..<(8 + Int(length)))
        guard let json = try? JSONSerialization.jsonObject(with: headerData), let header = json as? [String: Any] else {
            throw SafeTensorsError.malformed("header is not a JSON object")
        }
        let bufferStart = 8 + Int(length)
        let bufferSize = data.count - bufferStart
        var file = SafeTensors()
        if let meta = header["__metadata__"] {
            guard let strings = meta as? [String: String] else {
                throw SafeTensorsError.malformed("__metadata__ must map strings to strings")
            }
            file.metadata = strings
        }
        var spans: [(Int, Int, String)] = []
        for (name, value) in header where name != "__metadata__" {
            guard let info = value as? [String: Any], let dtypeName = info["dtype"] as? String,
                  let shapeValues = info["shape"] as? [NSNumber], let offsets = info["data_offsets"] as? [NSNumber],
                  offsets.count == 2 else {
                throw SafeTensorsError.malformed("entry \(name) lacks dtype, shape or data_offsets")
            }
            guard let dtype = DType(rawValue: dtypeName) else {
                throw SafeTensorsError.wrongType(name: name, found: dtypeName, expected: "F32, F64, F16, BF16, I64 or I32")
            }
            let shape = shapeValues.map(\.intValue)
            let begin = offsets[0].intValue, end = offsets[1].intValue
            let count = shape.reduce(Optional(1)) { product, n in product.flatMap { p in
                let (r, overflow) = p.multipliedReportingOverflow(by: n)
                return overflow ? nil : r
            } }
            guard shape.allSatisfy({ $0 >= 0 }), begin >= 0, begin <= end, end <= bufferSize, let count,
                  end - begin == count * dtype.size else {
                throw SafeTensorsError.malformed("entry \(name): offsets [\(begin), \(end)) do not fit shape \(shape) of \(dtypeName) in a \(bufferSize)-byte buffer")
            }
            spans.append((begin, end, name))
            file.put(name, Entry(dtype: dtype, shape: shape,
                                 bytes: data.subdata(in: (bufferStart + begin)..<(bufferStart + end))))
        }
        // Names in file order (by offset).
        file.names = spans.sorted { ($0.0, $0.2) < ($1.0, $1.2) }.map(\.2)
        if let expected = file.metadata[checksumKey] {
            var crc: UInt32 = 0
            for name in file.names { file.entries[name]!.bytes.withUnsafeBytes { crc = CRC32.checksum($0, continuing: crc) } }
            guard String(format: "%08x", crc) == expected else {
                throw SafeTensorsError.malformed("checksum mismatch: the tensor data has CRC-32 \(String(format: "%08x", crc)), the header records \(expected) (the file is corrupt)")
            }
        }
        return file
    }

    /// Reads and parses `path`.
    public static func read(_ path: String) throws -> SafeTensors {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw SafeTensorsError.unreadable(path: path, reason: error.localizedDescription)
        }
        do { return try decode(data) } catch let error as SafeTensorsError {
            throw SafeTensorsError.inFile(path: path, error.description)
        }
    }

    /// Reads only the `__metadata__` of the file at `path` (the header, not the tensors).
    public static func readMetadata(_ path: String) throws -> [String: String] {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw SafeTensorsError.unreadable(path: path, reason: "cannot open")
        }
        defer { try? handle.close() }
        let prefix = handle.readData(ofLength: 8)
        guard prefix.count == 8 else { throw SafeTensorsError.inFile(path: path, "file shorter than the 8-byte header length") }
        let length = prefix.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard length <= 100_000_000 else { throw SafeTensorsError.inFile(path: path, "header length \(length) is implausible") }
        let header = handle.readData(ofLength: Int(length))
        guard header.count == Int(length), let object = try? JSONSerialization.jsonObject(with: header) as? [String: Any] else {
            throw SafeTensorsError.inFile(path: path, "header is not a JSON object")
        }
        return object["__metadata__"] as? [String: String] ?? [:]
    }

    /// Writes the file atomically (see ``AtomicFile``).
    public func write(to path: String, checksum: Bool = false) throws { try AtomicFile.write(encoded(checksum: checksum), to: path) }

    /// The metadata key of the data checksum.
    public static let checksumKey = "crc32"
}

/// Why a safetensors file could not be used.
public enum SafeTensorsError: Error, CustomStringConvertible, Equatable {
    case malformed(String)
    case missing(String)
    case wrongType(name: String, found: String, expected: String)
    case unreadable(path: String, reason: String)
    case inFile(path: String, String)

    public var description: String {
        switch self {
        case .malformed(let why): "not a safetensors file: \(why)"
        case .missing(let name): "no tensor named \(name)"
        case .wrongType(let name, let found, let expected): "tensor \(name) has dtype \(found), expected \(expected)"
        case .unreadable(let path, let reason): "cannot read \(path): \(reason)"
        case .inFile(let path, let what): "\(path): \(what)"
        }
    }
}
