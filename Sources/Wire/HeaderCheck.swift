import Foundation

/// Bounds on what a sender can make a receiver hold or repeat, checked on a header's raw JSON before it is
/// decoded (`docs/protocol.md`, "Bounds"): the header's size, every string's length, and no object that
/// repeats a key (a JSON decoder would silently keep one of the two).
public enum HeaderBounds {
    /// The largest header frame accepted, in bytes.
    public static let maximumHeaderBytes = 1 << 20
    /// The longest string anywhere in a header (a log record's message), in bytes as sent.
    public static let maximumStringBytes = 16 << 10
    /// The longest model name.
    public static let maximumNameBytes = 64
    /// The longest tensor name (a state-dict key of a network's auxiliary branch: `weights` messages).
    public static let maximumTensorNameBytes = 128
    /// The longest host name (DNS's limit).
    public static let maximumHostBytes = 255
    /// The longest endpoint (`tcp://`, a host name, a port).
    public static let maximumEndpointBytes = 300
    /// The longest reason (a refusal, a shutdown).
    public static let maximumReasonBytes = 1024
    /// How much of a sender's text a receiver repeats in its logs and replies.
    public static let echoedPrefix = 64

    /// Checks `header` (the JSON frame's bytes).
    /// - Throws: ``WireError/header(_:)`` naming the bound that was crossed.
    static func check(_ header: [UInt8]) throws {
        guard header.count <= maximumHeaderBytes else {
            throw WireError.header("\(header.count) bytes, more than the limit of \(maximumHeaderBytes)")
        }
        // Per open container: for objects, the keys seen and whether the next string is a key.
        var objects: [(keys: Set<[UInt8]>, expectingKey: Bool)?] = []
        var i = 0
        while i < header.count {
            switch header[i] {
            case UInt8(ascii: "{"): objects.append((keys: [], expectingKey: true))
            case UInt8(ascii: "["): objects.append(nil)
            case UInt8(ascii: "}"), UInt8(ascii: "]"): if !objects.isEmpty { objects.removeLast() }
            case UInt8(ascii: ","): if let top = objects.last, top != nil { objects[objects.count - 1]!.expectingKey = true }
            case UInt8(ascii: "\""):
                let start = i + 1
                var end = start, escaped = false
                while end < header.count {
                    if header[end] == UInt8(ascii: "\\") { escaped = true; end += 2; continue }
                    if header[end] == UInt8(ascii: "\"") { break }
                    end += 1
                }
                let length = min(end, header.count) - start
                guard length <= maximumStringBytes else {
                    throw WireError.header("a string of \(length) bytes, more than the limit of \(maximumStringBytes)")
                }
                if let top = objects.last, let object = top, object.expectingKey {
                    let key = escaped ? unescaped(Array(header[start..<min(end, header.count)])) : Array(header[start..<min(end, header.count)])
                    guard !object.keys.contains(key) else {
                        throw WireError.header("the key \"\(clipped(String(decoding: key, as: UTF8.self)))\" appears twice in one object")
                    }
                    objects[objects.count - 1]!.keys.insert(key)
                    objects[objects.count - 1]!.expectingKey = false
                }
                i = end
            default: break
            }
            i += 1
        }
    }

    /// A key with its escapes resolved (`\u0061` is `a`), so that escaping cannot hide a repeated key.
    private static func unescaped(_ raw: [UInt8]) -> [UInt8] {
        let quoted = [UInt8(ascii: "["), UInt8(ascii: "\"")] + raw + [UInt8(ascii: "\""), UInt8(ascii: "]")]
        guard let strings = try? WireCodec.decoder.decode([String].self, from: Data(quoted)), let key = strings.first else { return raw }
        return Array(key.utf8)
    }

    /// `text` cut to ``echoedPrefix`` characters (with a note of how long it was): what a receiver may
    /// repeat of a sender's text.
    public static func clipped(_ text: String) -> String {
        guard text.count > echoedPrefix else { return text }
        return String(text.prefix(echoedPrefix)) + "… (\(text.utf8.count) bytes)"
    }

    /// Checks a decoded string field against its bound.
    static func field(_ name: String, _ value: String?, limit: Int) throws {
        guard let value, value.utf8.count > limit else { return }
        throw WireError.header("\(name) of \(value.utf8.count) bytes, more than the limit of \(limit)")
    }
}
