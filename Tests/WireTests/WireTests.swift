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
            .others(.init(rank: 0, globalStep: 476, ranks: [1], waitSeconds: 0.25), tensors: [TensorPayload(name: "rank1.logits", shape: [2, 3], values: logits.values)]),
            .evaluate(.init(epoch: 2, globalStep: 900)),
            .checkpoint(.init(globalStep: 950)),
            .hello(.init(rank: 1, model: "resnet8", host: "b", resumeStep: 40)),
            .evaluation(.init(rank: 1, epoch: 2), tensors: [logits]),
            .log(.init(records: [record], status: finiteStatus)),
            .log(.init(records: [])),
            .heartbeat(.init(rank: nil, sequence: 3)),
            .shutdown(.init(reason: "done")),
        ]
        for m in messages {
            #expect(try codec.decode(codec.encode(m)) == m, "\(m.type)")
        }
    }

    let record = LogRecord(time: 1_795_000_000.5, level: "warning", rank: 2, host: "node-a", label: "cohort.peer",
                           message: "dropped a message", metadata: ["reason": "bad/shape"])
    let status = PeerStatus(rank: 2, host: "node-a", model: "resnet8", epoch: 0, epochs: 3, step: 4, stepsPerEpoch: 10, globalStep: 5,
                            loss: .nan, accuracy: 0.5, testAccuracy: nil, imagesPerSecond: 300, stepSeconds: 0.4,
                            exchangeSeconds: 0.001, time: 1_795_000_001)

    var finiteStatus: PeerStatus {
        PeerStatus(rank: 2, host: "node-a", model: "resnet8", epoch: 0, epochs: 3, step: 4, stepsPerEpoch: 10, globalStep: 5, loss: 1.5,
                   accuracy: 0.5, testAccuracy: 0.8, imagesPerSecond: 300, stepSeconds: 0.4, exchangeSeconds: 0.001, time: 1_795_000_001)
    }

    /// Log-stream events round-trip, a diverged (NaN) loss included; unknown topics are rejected.
    @Test func streamEventsRoundTrip() throws {
        for event in [StreamEvent.log(record), .end(StreamEnd(ok: false, reason: "stopped", time: 1))] {
            #expect(try StreamEvent.decode(event.frames()) == event)
        }
        guard case .status(let decoded) = try StreamEvent.decode(StreamEvent.status(status).frames()) else {
            Issue.record("not a status"); return
        }
        #expect(decoded.loss.isNaN && decoded.rank == 2 && decoded.testAccuracy == nil)
        #expect(throws: WireError.unknownType("gossip")) { try StreamEvent.decode([Array("gossip".utf8), Array("{}".utf8)]) }
        #expect(throws: WireError.self) { try StreamEvent.decode([Array("log".utf8), Array("{\"time\":1}".utf8)]) }
        #expect(String(decoding: StreamEvent.log(record).frames()[1], as: UTF8.self).contains("bad/shape"), "slashes unescaped")
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

/// The layout of a peer's outputs (issue 17: a type, not names built and parsed in two places).
@Suite struct OutputLayoutTests {
    @Test func namesShapesAndTheOthersNaming() {
        let layered = OutputLayout(auxiliaryBranches: 2, embeddings: true, embeddingDimension: 32, classCount: 10)
        #expect(layered.expected(batchSize: 4).map(\.name) == ["embedding.aux1", "embedding.aux2", "embedding", "logits"])
        #expect(layered.expected(batchSize: 4).map(\.shape) == [[4, 32], [4, 32], [4, 32], [4, 10]])
        let plain = OutputLayout(auxiliaryBranches: 0, embeddings: false, embeddingDimension: 32, classCount: 100)
        #expect(plain.expected(batchSize: 2).map(\.name) == ["logits"] && plain.shape(of: .logits, batchSize: 2) == [2, 100])
        #expect(layered.expectedOthers(ranks: [0, 2], batchSize: 4).map(\.name)
                == ["rank0.embedding.aux1", "rank0.embedding.aux2", "rank0.embedding", "rank0.logits",
                    "rank2.embedding.aux1", "rank2.embedding.aux2", "rank2.embedding", "rank2.logits"])
        let sent = layered.expected(batchSize: 1).enumerated().map { i, t in
            TensorPayload(name: t.name, shape: t.shape, values: [Float](repeating: Float(i), count: t.shape.reduce(1, *)))
        }
        let relabelled = layered.forOthers(rank: 3, sent)
        #expect(relabelled.map(\.name) == layered.expectedOthers(ranks: [3], batchSize: 1).map(\.name))
        let byName = Dictionary(uniqueKeysWithValues: relabelled.map { ($0.name, $0) })
        #expect(OutputLayout.values(of: .auxiliaryEmbedding(branch: 2), rank: 3, in: byName) == [Float](repeating: 1, count: 32))
        #expect(OutputLayout.values(of: .logits, rank: 3, in: byName) == [Float](repeating: 3, count: 10))
        #expect(OutputLayout.values(of: .logits, rank: 1, in: byName) == nil)
    }
}

/// A shutdown's reason, typed: `finished` or a failure's text, the same string on the wire.
@Suite struct ShutdownCauseTests {
    @Test func causesRoundTripThroughTheReasonText() {
        #expect(Message.Shutdown(.finished).reason == "finished" && Message.Shutdown(reason: "finished").cause == .finished)
        #expect(Message.Shutdown(.failed("disk full")).reason == "disk full")
        #expect(Message.Shutdown(reason: "coordinator: stopped by signal 15").cause == .failed("coordinator: stopped by signal 15"))
    }
}
