import Foundation
import Testing
@testable import Wire

@Suite struct WireTests {
    let codec = WireCodec(digest: "c0ffee")
    let logits = TensorPayload(name: "logits", shape: [2, 3], values: [1, -2, 3.5, 0, 1e-3, -7])
    let embedding = TensorPayload(name: "embedding", shape: [2, 2], values: [0.6, 0.8, 1, 0])

    @Test func everyMessageRoundTrips() throws {
        let messages: [Message] = [
            .hello(.init(rank: 2, model: "resnet8")),
            .welcome(.init(accepted: false, reason: "rank 2 is taken")),
            .step(.init(epoch: 1, step: 7, globalStep: 476), teacher: [logits]),
            .outputs(.init(rank: 1, globalStep: 476), tensors: [embedding, logits]),
            .others(.init(rank: 0, globalStep: 476), tensors: [TensorPayload(name: "rank1.logits", shape: [2, 3], values: logits.values)]),
            .heartbeat(.init(rank: nil, sequence: 3)),
            .shutdown(.init(reason: "done")),
        ]
        for m in messages {
            #expect(try codec.decode(codec.encode(m)) == m, "\(m.type)")
        }
    }

    @Test func goldenBytes() {
        let frames = codec.encode(.outputs(.init(rank: 1, globalStep: 5), tensors: [TensorPayload(name: "x", shape: [2], values: [1, 2])]))
        #expect(frames.count == 3)
        #expect(frames[0] == Array("COHORT".utf8))
        #expect(String(decoding: frames[1], as: UTF8.self)
                == #"{"body":{"globalStep":5,"rank":1},"digest":"c0ffee","tensors":[{"dtype":"F32","name":"x","shape":[2]}],"type":"outputs","version":1}"#)
        #expect(frames[2] == [0, 0, 0x80, 0x3F, 0, 0, 0, 0x40])
    }

    @Test func malformedMessagesAreRejectedWithTheReason() {
        let good = codec.encode(.outputs(.init(rank: 1, globalStep: 5), tensors: [logits]))
        func rejects(_ frames: [[UInt8]], _ expected: WireError? = nil, _ reason: Comment) {
            do {
                _ = try codec.decode(frames)
                Issue.record("accepted: \(reason)")
            } catch let error as WireError {
                if let expected { #expect(error == expected, reason) }
            } catch {
                Issue.record("unexpected \(error)")
            }
        }
        rejects([good[0]], .frameCount(1), "one frame")
        rejects([Array("ZMQ".utf8)] + good.dropFirst(), .signature, "wrong signature")
        rejects([good[0], Array("{".utf8)] + good.dropFirst(2), nil, "truncated header")
        rejects(WireCodec(digest: "other").encode(.heartbeat(.init(rank: 1, sequence: 1))),
                .configuration(expected: "c0ffee", found: "other"), "another cohort's configuration")
        rejects(Array(good.dropLast()), nil, "missing tensor frame")
        rejects(Array(good.dropLast()) + [Array(good[2].dropLast(4))], nil, "short tensor frame")
        var nan = good
        nan[2] = [Float](arrayLiteral: .nan, 1, 2, 3, 4, 5).withUnsafeBytes { Array($0) }
        rejects(nan, nil, "non-finite values")
        let header = String(decoding: good[1], as: UTF8.self)
        rejects([good[0], Array(header.replacingOccurrences(of: "\"outputs\"", with: "\"gossip\"").utf8), good[2]],
                .unknownType("gossip"), "unknown type")
        rejects([good[0], Array(header.replacingOccurrences(of: "\"version\":1", with: "\"version\":9").utf8), good[2]],
                .version(9), "future version")
        rejects([good[0], Array(header.replacingOccurrences(of: "\"F32\"", with: "\"F64\"").utf8), good[2]], nil, "dtype")
        rejects(codec.encode(.hello(.init(rank: 0, model: "resnet8"))) + [good[2]], nil, "tensor on a message without tensors")
        let small = WireCodec(digest: "c0ffee", maximumBytes: 64)
        #expect(throws: WireError.tooLarge(bytes: good.reduce(0) { $0 + $1.count }, limit: 64)) { try small.decode(good) }
    }
}
