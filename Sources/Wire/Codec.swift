import Foundation

/// Why a received message was rejected. The receiver logs it and drops the message; nothing it holds
/// changes.
public enum WireError: Error, Equatable, CustomStringConvertible {
    case frameCount(Int)
    case signature
    case header(String)
    case version(Int)
    case configuration(expected: String, found: String)
    case unknownType(String)
    case tensor(String)
    case tooLarge(bytes: Int, limit: Int)

    public var description: String {
        switch self {
        case .frameCount(let n): "a message needs a signature and a header frame, got \(n) frame(s)"
        case .signature: "the first frame is not the Cohort protocol signature"
        case .header(let why): "bad header: \(why)"
        case .version(let v): "protocol version \(v), this side speaks \(WireCodec.version)"
        case .configuration(let expected, let found): "configuration digest \(HeaderBounds.clipped(found)) differs from this cohort's \(expected)"
        case .unknownType(let t): "unknown message type \"\(t)\""
        case .tensor(let why): "bad tensor frame: \(why)"
        case .tooLarge(let bytes, let limit): "message of \(bytes) bytes exceeds the limit of \(limit)"
        }
    }
}

/// Encodes and decodes messages:
///
///     frame 0: signature  "COHORT"            (6 bytes)
///     frame 1: header     JSON {"version", "type", "digest", "body", "tensors": [{"name", "dtype", "shape"}]}
///     frame 2...: one raw little-endian F32 frame per tensor, in the header's order
///
/// `digest` is the cohort configuration's digest: both sides must agree on it.
public struct WireCodec: Sendable {
    public static let version = 1
    public static let signature: [UInt8] = Array("COHORT".utf8)
    /// The configuration digest this side expects.
    public let digest: String
    /// The largest message accepted, in bytes.
    public let maximumBytes: Int

    public init(digest: String, maximumBytes: Int = 256 << 20) {
        self.digest = digest
        self.maximumBytes = maximumBytes
    }

    /// The header without its body: read first, to validate and to choose the body's type.
    struct Preamble: Codable {
        let version: Int
        let type: String
        let digest: String
        let tensors: [TensorDescriptor]
    }

    /// The whole header, with the body as a nested JSON object.
    struct Header<Body: Codable>: Codable {
        let version: Int
        let type: String
        let digest: String
        let tensors: [TensorDescriptor]
        let body: Body
    }

    /// The frames of `message`.
    public func encode(_ message: Message) -> [[UInt8]] {
        let parts = encodeParts(message)
        return parts.head + parts.tensors.map(\.bytes)
    }

    /// `message` as its first two frames (signature, header) and the tensors whose raw bytes follow, so
    /// a sender can hand the tensors' storage to the socket without copying it into frames first.
    public func encodeParts(_ message: Message) -> (head: [[UInt8]], tensors: [TensorPayload]) {
        func parts<T: Codable>(_ body: T, _ tensors: [TensorPayload]) -> (head: [[UInt8]], tensors: [TensorPayload]) {
            let header = Header(version: Self.version, type: message.type, digest: digest, tensors: tensors.map(\.descriptor),
                                body: body)
            // Bodies are plain structs of strings and numbers (non-finite ones as strings): encoding cannot fail.
            return ([Self.signature, Array(try! Self.encoder.encode(header))], tensors)
        }
        switch message {
        case .hello(let v): return parts(v, [])
        case .welcome(let v): return parts(v, [])
        case .step(let v, let t): return parts(v, t)
        case .outputs(let v, let t): return parts(v, t)
        case .others(let v, let t): return parts(v, t)
        case .evaluate(let v): return parts(v, [])
        case .checkpoint(let v): return parts(v, [])
        case .evaluation(let v, let t): return parts(v, t)
        case .log(let v): return parts(v, [])
        case .heartbeat(let v): return parts(v, [])
        case .shutdown(let v): return parts(v, [])
        case .weights(let v, let t): return parts(v, t)
        case .members(let v): return parts(v, [])
        }
    }

    /// JSON with sorted keys; non-finite numbers (a diverged loss) as the strings "nan", "inf", "-inf".
    public static var encoder: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return encoder
    }

    /// The decoder matching ``encoder``.
    public static var decoder: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return decoder
    }

    /// Decodes and validates `frames`: size, signature, version, configuration digest, type, and every
    /// tensor's dtype, shape against its frame's length, and finite values.
    /// - Throws: ``WireError`` saying what is wrong.
    public func decode(_ frames: [[UInt8]]) throws -> Message {
        let total = frames.reduce(0) { $0 + $1.count }
        guard total <= maximumBytes else { throw WireError.tooLarge(bytes: total, limit: maximumBytes) }
        guard frames.count >= 2 else { throw WireError.frameCount(frames.count) }
        guard frames[0] == Self.signature else { throw WireError.signature }
        try HeaderBounds.check(frames[1])
        let header: Preamble
        do { header = try Self.decoder.decode(Preamble.self, from: Data(frames[1])) } catch {
            throw WireError.header("not the expected JSON (\(Self.summary(of: error)))")
        }
        guard header.version == Self.version else { throw WireError.version(header.version) }
        guard header.digest == digest else { throw WireError.configuration(expected: digest, found: header.digest) }
        guard header.tensors.count == frames.count - 2 else {
            throw WireError.tensor("header lists \(header.tensors.count) tensors, message has \(frames.count - 2) tensor frames")
        }
        var tensors: [TensorPayload] = []
        for (descriptor, frame) in zip(header.tensors, frames.dropFirst(2)) {
            try HeaderBounds.field("a tensor name", descriptor.name, limit: HeaderBounds.maximumTensorNameBytes)
            guard descriptor.dtype == "F32" else { throw WireError.tensor("\(descriptor.name): dtype \(HeaderBounds.clipped(descriptor.dtype)), expected F32") }
            guard descriptor.shape.allSatisfy({ $0 >= 0 }), descriptor.shape.count <= 8 else {
                throw WireError.tensor("\(descriptor.name): bad shape \(descriptor.shape)")
            }
            var count = 1
            for n in descriptor.shape {
                let (product, overflow) = count.multipliedReportingOverflow(by: n)
                guard !overflow, product <= maximumBytes / 4 else { throw WireError.tensor("\(descriptor.name): shape \(descriptor.shape) is too large") }
                count = product
            }
            guard frame.count == count * 4 else {
                throw WireError.tensor("\(descriptor.name): shape \(descriptor.shape) needs \(count * 4) bytes, frame has \(frame.count)")
            }
            let values = frame.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
            guard values.allSatisfy(\.isFinite) else { throw WireError.tensor("\(descriptor.name): non-finite values") }
            tensors.append(TensorPayload(name: descriptor.name, shape: descriptor.shape, values: values))
        }
        func body<T: Codable>(_ type: T.Type) throws -> T {
            do { return try Self.decoder.decode(Header<T>.self, from: Data(frames[1])).body } catch {
                throw WireError.header("\(header.type) body: \(Self.summary(of: error))")
            }
        }
        func noTensors() throws {
            guard tensors.isEmpty else { throw WireError.tensor("\(header.type) carries no tensors, got \(tensors.count)") }
        }
        switch header.type {
        case "hello":
            try noTensors()
            let hello = try body(Message.Hello.self)
            try HeaderBounds.field("hello.model", hello.model, limit: HeaderBounds.maximumNameBytes)
            try HeaderBounds.field("hello.host", hello.host, limit: HeaderBounds.maximumHostBytes)
            try HeaderBounds.field("hello.dataEndpoint", hello.dataEndpoint, limit: HeaderBounds.maximumEndpointBytes)
            return .hello(hello)
        case "welcome":
            try noTensors()
            let welcome = try body(Message.Welcome.self)
            try HeaderBounds.field("welcome.reason", welcome.reason, limit: HeaderBounds.maximumReasonBytes)
            return .welcome(welcome)
        case "step":
            let step = try body(Message.Step.self)
            for endpoint in step.endpoints ?? [] { try HeaderBounds.field("step.endpoints", endpoint, limit: HeaderBounds.maximumEndpointBytes) }
            return .step(step, teacher: tensors)
        case "outputs": return .outputs(try body(Message.StepOutputs.self), tensors: tensors)
        case "others": return .others(try body(Message.Others.self), tensors: tensors)
        case "evaluate": try noTensors(); return .evaluate(try body(Message.Evaluate.self))
        case "checkpoint": try noTensors(); return .checkpoint(try body(Message.Checkpoint.self))
        case "evaluation": return .evaluation(try body(Message.Evaluation.self), tensors: tensors)
        case "weights": return .weights(try body(Message.Weights.self), tensors: tensors)
        case "members":
            try noTensors()
            let members = try body(Message.Members.self)
            for endpoint in members.endpoints { try HeaderBounds.field("members.endpoints", endpoint, limit: HeaderBounds.maximumEndpointBytes) }
            return .members(members)
        case "log": try noTensors(); return .log(try body(Message.LogBatch.self))
        case "heartbeat": try noTensors(); return .heartbeat(try body(Message.Heartbeat.self))
        case "shutdown":
            try noTensors()
            let shutdown = try body(Message.Shutdown.self)
            try HeaderBounds.field("shutdown.reason", shutdown.reason, limit: HeaderBounds.maximumReasonBytes)
            return .shutdown(shutdown)
        default: throw WireError.unknownType(HeaderBounds.clipped(header.type))
        }
    }

    /// A decoding error without the sender's values: what was wrong and where (a coding path), short.
    static func summary(of error: Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, let context):
            return "missing \(HeaderBounds.clipped((context.codingPath + [key]).map(\.stringValue).joined(separator: ".")))"
        case DecodingError.typeMismatch(let type, let context), DecodingError.valueNotFound(let type, let context):
            return "\(HeaderBounds.clipped(context.codingPath.map(\.stringValue).joined(separator: "."))) is not a \(type)"
        case DecodingError.dataCorrupted(let context):
            return "malformed at \(HeaderBounds.clipped(context.codingPath.map(\.stringValue).joined(separator: ".")))"
        default:
            return "malformed"
        }
    }
}
