import Foundation
import Testing
@testable import Wire

/// Property test of the decoder: random bytes, truncated and dropped frames, edited headers (shapes,
/// dtypes, huge and negative sizes, bad JSON), non-finite values, oversize messages. No input may crash
/// the decoder or make it allocate beyond the message's own size; every bad input is rejected with a
/// ``WireError`` and a reason; untouched messages still decode.
@Suite struct DecoderFuzzTests {
    /// A small deterministic generator (SplitMix64).
    struct Generator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    static let inputs = 200_000

    @Test func decoderRejectsEveryMalformedInputWithAReason() throws {
        let codec = WireCodec(digest: "feed", maximumBytes: 1 << 20)
        var g = Generator(state: 2026)
        let valid: [[[UInt8]]] = [
            codec.encode(.outputs(.init(rank: 1, globalStep: 9), tensors: [
                TensorPayload(name: "embedding", shape: [4, 8], values: (0..<32).map { Float($0) / 7 }),
                TensorPayload(name: "logits", shape: [4, 10], values: (0..<40).map { Float($0) - 20 })])),
            codec.encode(.hello(.init(rank: 0, model: "resnet8", host: "a"))),
            codec.encode(.others(.init(rank: 0, globalStep: 3, ranks: [1], waitSeconds: 0.5), tensors: [
                TensorPayload(name: "rank1.logits", shape: [2, 10], values: [Float](repeating: 1, count: 20))])),
            codec.encode(.log(.init(records: [LogRecord(time: 1, level: "info", rank: 0, host: "h", label: "l", message: "m")]))),
        ]
        var rejected = 0, accepted = 0
        var reasons = Set<String>()
        for i in 0..<Self.inputs {
            let base = valid[i % valid.count]
            var frames = base
            var mustFail = true
            switch Int.random(in: 0..<9, using: &g) {
            case 0:  // random frames of random bytes
                frames = (0..<Int.random(in: 0..<5, using: &g)).map { _ in
                    (0..<Int.random(in: 0..<64, using: &g)).map { _ in UInt8.random(in: 0...255, using: &g) } }
            case 1:  // truncate one frame
                let f = Int.random(in: 0..<frames.count, using: &g)
                if frames[f].isEmpty { mustFail = false; break }
                frames[f] = Array(frames[f].prefix(Int.random(in: 0..<frames[f].count, using: &g)))
            case 2:  // drop or duplicate a frame
                let f = Int.random(in: 0..<frames.count, using: &g)
                if Bool.random(using: &g) { frames.remove(at: f) } else { frames.insert(frames[f], at: f) }
                mustFail = frames.count < 2 || f < 2 || base.count > 2 || frames.count != base.count
            case 3:  // a shape edited: huge, negative, zero or off by one
                let header = String(decoding: frames[1], as: UTF8.self)
                guard let range = header.range(of: #""shape":\[[0-9,]*\]"#, options: .regularExpression) else { mustFail = false; break }
                let shapes = ["[4294967296,4294967296]", "[-1,40]", "[0]", "[9223372036854775807,2]", "[5,10]", "[4,11]", "[]"]
                frames[1] = Array(header.replacingCharacters(in: range, with: "\"shape\":" + shapes.randomElement(using: &g)!).utf8)
            case 4:  // a non-finite value in a tensor frame
                guard frames.count > 2 else { mustFail = false; break }
                var values = frames[2].withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
                values[Int.random(in: 0..<values.count, using: &g)] = [Float.nan, .infinity, -.infinity].randomElement(using: &g)!
                frames[2] = values.withUnsafeBytes { Array($0) }
            case 5:  // a random byte of the header flipped
                let at = Int.random(in: 0..<frames[1].count, using: &g)
                let before = frames[1][at]
                frames[1][at] ^= UInt8.random(in: 1...255, using: &g)
                mustFail = !(before == 0x20)  // a changed space may still be valid JSON
                if (try? JSONSerialization.jsonObject(with: Data(frames[1]))) != nil { mustFail = false }
            case 6:  // oversize: a frame beyond the limit
                frames.append([UInt8](repeating: 0, count: (1 << 20) + 1))
            case 7:  // dtype, version, digest or type edited
                let header = String(decoding: frames[1], as: UTF8.self)
                let edits = [("\"F32\"", "\"F64\""), ("\"version\":1", "\"version\":2"), ("\"feed\"", "\"beef\""),
                             ("\"type\":\"", "\"type\":\"x")]
                let (from, to) = edits.randomElement(using: &g)!
                guard header.contains(from) else { mustFail = false; break }
                frames[1] = Array(header.replacingOccurrences(of: from, with: to).utf8)
            default:  // untouched
                mustFail = false
            }
            do {
                _ = try codec.decode(frames)
                accepted += 1
                #expect(!mustFail, "accepted a bad input (case \(i))")
            } catch let error as WireError {
                rejected += 1
                reasons.insert(String(describing: error).prefix(24).description)
            } catch {
                Issue.record("input \(i): a non-WireError \(error)")
            }
        }
        #expect(rejected + accepted == Self.inputs)
        #expect(rejected > Self.inputs / 2 && accepted > Self.inputs / 20, "rejected \(rejected), accepted \(accepted)")
        #expect(reasons.count >= 8, "\(reasons)")
    }
}
