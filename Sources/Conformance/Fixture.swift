import Foundation
import Tensors

/// A JSON value of a fixture's `params`.
public enum ParameterValue: Decodable, Sendable, Equatable {
    case number(Double), bool(Bool), string(String), array([ParameterValue]), object([String: ParameterValue]), null

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let n = try? c.decode(Double.self) { self = .number(n) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([ParameterValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: ParameterValue].self)) }
    }
}

/// One tensor of a fixture: its shape and row-major values (integers for labels and indices).
public struct FixtureTensor: Decodable, Sendable {
    public let shape: [Int]
    public let data: [Double]

    public var floats: [Float] { data.map { Float($0) } }
    public var integers: [Int] { data.map { Int($0.rounded()) } }
    /// As a tensor of the engine.
    public var tensor: Tensor { Tensor(floats, shape: shape) }
}

/// A reference case produced by an official PyTorch implementation (see `Tests/ConformanceTests/Fixtures/README.md`).
public struct Fixture: Decodable, Sendable {
    public let `case`: String
    public let kind: String
    public let params: [String: ParameterValue]
    public let tensors: [String: FixtureTensor]

    enum CodingKeys: String, CodingKey { case `case`, kind, params, tensors }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        `case` = try c.decodeIfPresent(String.self, forKey: .case) ?? "(unnamed)"
        kind = try c.decode(String.self, forKey: .kind)
        params = try c.decodeIfPresent([String: ParameterValue].self, forKey: .params) ?? [:]
        tensors = try c.decode([String: FixtureTensor].self, forKey: .tensors)
    }

    /// Reads and decodes a fixture file.
    public static func load(_ url: URL) throws -> Fixture {
        let bytes = try Data(contentsOf: url)
        do {
            return try JSONDecoder().decode(Fixture.self, from: bytes)
        } catch {
            throw FixtureError.malformed(file: url.path, reason: "\(error)")
        }
    }

    /// The tensor `name`, or an error naming the case and the missing tensor.
    public func tensor(_ name: String) throws -> FixtureTensor {
        guard let t = tensors[name] else { throw FixtureError.missingTensor(case: self.case, name: name) }
        return t
    }

    /// A numeric parameter.
    public func number(_ name: String) throws -> Double {
        guard case .number(let v)? = params[name] else { throw FixtureError.missingParameter(case: self.case, name: name) }
        return v
    }

    /// A numeric parameter, or `fallback` when absent.
    public func number(_ name: String, default fallback: Double) throws -> Double {
        params[name] == nil ? fallback : try number(name)
    }

    /// An integer, or a pair of integers given as an integer or a two-element list.
    public func pair(_ name: String) throws -> (Int, Int) {
        switch params[name] {
        case .number(let v)?: return (Int(v), Int(v))
        case .array(let a)? where a.count == 2:
            if case .number(let x) = a[0], case .number(let y) = a[1] { return (Int(x), Int(y)) }
        default: break
        }
        throw FixtureError.missingParameter(case: self.case, name: name)
    }

    /// A boolean parameter (JSON `true`/`false` or 0/1), or `fallback` when absent.
    public func flag(_ name: String, default fallback: Bool) throws -> Bool {
        switch params[name] {
        case nil, .null?: return fallback
        case .bool(let b)?: return b
        case .number(let v)?: return v != 0
        default: throw FixtureError.missingParameter(case: self.case, name: name)
        }
    }

    /// A list of integers.
    public func integers(_ name: String) throws -> [Int] {
        guard case .array(let a)? = params[name] else { throw FixtureError.missingParameter(case: self.case, name: name) }
        return try a.map {
            guard case .number(let v) = $0 else { throw FixtureError.missingParameter(case: self.case, name: name) }
            return Int(v)
        }
    }
}

/// Why a fixture could not be used.
public enum FixtureError: Error, CustomStringConvertible {
    case malformed(file: String, reason: String)
    case missingTensor(case: String, name: String)
    case missingParameter(case: String, name: String)
    case unknownKind(String)

    public var description: String {
        switch self {
        case .malformed(let file, let reason): "\(file) is not a valid fixture: \(reason)"
        case .missingTensor(let c, let name): "case \(c) has no tensor \"\(name)\""
        case .missingParameter(let c, let name): "case \(c) has no usable parameter \"\(name)\""
        case .unknownKind(let kind): "unknown kind \"\(kind)\""
        }
    }
}
