import Yams
import Training

/// Why a configuration file was rejected: always the key path (`peers[1].model`) and what is allowed.
public enum ConfigurationError: Error, CustomStringConvertible, Equatable {
    case unreadable(path: String, reason: String)
    case syntax(String)
    case unknownKey(path: String, allowed: [String])
    case missing(path: String, expected: String)
    case badValue(path: String, expected: String, found: String)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason): "cannot read configuration \(path): \(reason)"
        case .syntax(let why): "configuration is not valid YAML: \(why)"
        case .unknownKey(let path, let allowed):
            "unknown key \(path)\(suggestion(for: String(path.split(separator: ".").last ?? ""), among: allowed)); allowed here: \(allowed.joined(separator: ", "))"
        case .missing(let path, let expected): "missing \(path) (\(expected))"
        case .badValue(let path, let expected, let found): "\(path) must be \(expected), got \(found)"
        }
    }
}

/// A position in a parsed YAML document, with typed accessors that report the key path on error.
struct ConfigurationNode {
    let node: Node
    let path: String

    static func parse(_ text: String) throws -> ConfigurationNode {
        do {
            guard let node = try Yams.compose(yaml: text) else { throw ConfigurationError.syntax("the document is empty") }
            return ConfigurationNode(node: node, path: "")
        } catch let error as ConfigurationError {
            throw error
        } catch {
            throw ConfigurationError.syntax("\(error)")
        }
    }

    private func child(_ key: String) -> String { path.isEmpty ? key : path + "." + key }

    /// The mapping's entries; any key not in `allowed` is an error.
    func mapping(allowed: [String]) throws -> [String: ConfigurationNode] {
        guard case .mapping(let m) = node else {
            throw ConfigurationError.badValue(path: path.isEmpty ? "(document)" : path, expected: "a mapping with keys \(allowed.joined(separator: ", "))", found: describe())
        }
        var result: [String: ConfigurationNode] = [:]
        for (k, v) in m {
            guard let key = k.string else { throw ConfigurationError.badValue(path: path, expected: "string keys", found: "\(k)") }
            guard allowed.contains(key) else { throw ConfigurationError.unknownKey(path: child(key), allowed: allowed) }
            result[key] = ConfigurationNode(node: v, path: child(key))
        }
        return result
    }

    func list() throws -> [ConfigurationNode] {
        guard case .sequence(let s) = node else { throw ConfigurationError.badValue(path: path, expected: "a list", found: describe()) }
        return s.enumerated().map { ConfigurationNode(node: $0.element, path: "\(path)[\($0.offset)]") }
    }

    func string() throws -> String {
        guard case .scalar(let s) = node else { throw ConfigurationError.badValue(path: path, expected: "a string", found: describe()) }
        return s.string
    }

    func int(_ range: ClosedRange<Int>? = nil) throws -> Int {
        guard let v = node.int else { throw ConfigurationError.badValue(path: path, expected: "an integer", found: describe()) }
        if let range, !range.contains(v) { throw ConfigurationError.badValue(path: path, expected: "an integer in \(range.lowerBound)...\(range.upperBound)", found: "\(v)") }
        return v
    }

    func float(minimum: Float? = nil, maximum: Float? = nil) throws -> Float {
        guard let d = node.float, d.isFinite else { throw ConfigurationError.badValue(path: path, expected: "a number", found: describe()) }
        let v = Float(d)
        if let minimum, v < minimum { throw ConfigurationError.badValue(path: path, expected: "a number >= \(minimum)", found: "\(v)") }
        if let maximum, v > maximum { throw ConfigurationError.badValue(path: path, expected: "a number <= \(maximum)", found: "\(v)") }
        return v
    }

    func bool() throws -> Bool {
        guard let b = node.bool else { throw ConfigurationError.badValue(path: path, expected: "true or false", found: describe()) }
        return b
    }

    /// A string that must be one of `choices`.
    func choice(_ choices: [String]) throws -> String {
        let s = try string()
        guard choices.contains(s) else {
            throw ConfigurationError.badValue(path: path, expected: "one of \(choices.joined(separator: ", "))", found: "\"\(s)\"\(suggestion(for: s, among: choices))")
        }
        return s
    }

    func describe() -> String {
        switch node {
        case .scalar(let s): return "\"\(s.string)\""
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        }
    }
}

