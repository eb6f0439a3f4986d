import Foundation
import Testing
import Training
import Wire
@testable import Runtime

/// Mesh mode (`network.exchange: mesh`) driven with a fake clock: the coordinator hands out the data
/// endpoints with each step and passes no tensors; each peer sends its outputs to the others directly,
/// tells the coordinator, and goes on once every peer the coordinator names has reached it.
@Suite struct MeshTests {
    static func meshConfiguration() throws -> CohortConfiguration { try protocolConfiguration("network: {exchange: mesh}") }

    // MARK: The coordinator

    /// The header-only outputs a peer sends the coordinator for `step`.
    static func word(_ rank: Int, _ step: Message.Step) -> CoordinatorCore.Event {
        .received(.outputs(.init(rank: rank, globalStep: step.globalStep, attempt: step.attempt), tensors: []),
                  from: CoordinatorHarness.connection(rank), user: nil)
    }

    static func sentStep(_ c: CoordinatorHarness, to rank: Int) -> Message.Step? {
        c.sent(to: rank).compactMap { if case .step(let s, _) = $0 { s } else { nil } }.last
    }

    @Test func theCoordinatorSendsTheEndpointsWithEachStepAndNoTensors() throws {
        var c = CoordinatorHarness(try Self.meshConfiguration())
        let admitted = c.admit([0, 1, 2])
        c.prepared(try #require(admitted))
        let sent = try #require(Self.sentStep(c, to: 1))
        #expect(sent.globalStep == 0 && sent.endpoints == (0..<3).map { CoordinatorHarness.dataEndpoint($0) } && sent.attempt != nil)
        #expect((0..<3).allSatisfy { Self.sentStep(c, to: $0) == sent }, "every participant gets the same step")
        for r in 0..<3 { c.handle(Self.word(r, sent)) }
        for r in 0..<3 {
            guard case .others(let body, let tensors)? = c.sent(to: r).last else { Issue.record("no others for \(r)"); return }
            #expect(tensors.isEmpty && body.ranks == (0..<3).filter { $0 != r } && body.globalStep == 0)
        }
        #expect(c.core.state.globalStep == 1)
        c.prepared(PeerHarness.step(1))
        let next = try #require(Self.sentStep(c, to: 0))
        #expect(next.globalStep == 1 && next.attempt == sent.attempt! + 1, "each sending is numbered")
    }

    @Test func outputsWithTensorsOrFromAnotherSendingAreNotCounted() throws {
        var c = CoordinatorHarness(try Self.meshConfiguration())
        let admitted = c.admit([0, 1, 2])
        c.prepared(try #require(admitted))
        let sent = try #require(Self.sentStep(c, to: 0))
        let stale = Message.Step(epoch: 0, step: 0, globalStep: 0).forMesh(attempt: sent.attempt! - 1, endpoints: sent.endpoints!)
        c.handle(Self.word(0, stale))
        c.outputs(1, step: 0)  // the coordinator mode's outputs: no sending's number
        #expect(c.logs.filter { $0.message == "dropped an unexpected outputs message" }.count == 2)
        let withTensors = Message.outputs(.init(rank: 2, globalStep: 0, attempt: sent.attempt),
                                          tensors: [TensorPayload(name: "logits", shape: [4, 10], values: Array(repeating: 0, count: 40))])
        c.handle(.received(withTensors, from: CoordinatorHarness.connection(2), user: nil))
        #expect(c.logged("dropped invalid outputs"))
        for r in 0..<3 { c.handle(Self.word(r, sent)) }
        #expect(c.core.state.globalStep == 1, "counted once each, at the right sending")
    }

    @Test func anAbsentPeerIsLeftOutOfTheOthersAndTheNextStepsEndpoints() throws {
        var c = CoordinatorHarness(try Self.meshConfiguration())
        let admitted = c.admit([0, 1, 2])
        c.prepared(try #require(admitted))
        let sent = try #require(Self.sentStep(c, to: 0))
        c.handle(Self.word(0, sent))
        c.handle(Self.word(1, sent))
        c.beat([0, 1])
        c.tick(after: 121)
        guard case .others(let body, _)? = c.sent(to: 0).last else { Issue.record("no others"); return }
        #expect(body.ranks == [1])
        c.prepared(PeerHarness.step(1))
        let next = try #require(Self.sentStep(c, to: 0))
        #expect(next.endpoints == [CoordinatorHarness.dataEndpoint(0), CoordinatorHarness.dataEndpoint(1), ""])
    }

    @Test func aPeerConfiguredForTheOtherExchangeIsRefusedWithTheReason() throws {
        var mesh = CoordinatorHarness(try Self.meshConfiguration())
        mesh.handle(.start)
        mesh.handle(.received(.hello(.init(rank: 0, model: "resnet8")), from: CoordinatorHarness.connection(0), user: nil))
        guard case .welcome(let w)? = mesh.sent(to: 0).last else { Issue.record("no answer"); return }
        #expect(!w.accepted && w.reason?.contains("network.exchange: mesh") == true)

        var plain = CoordinatorHarness(try protocolConfiguration())
        plain.handle(.start)
        plain.handle(.received(.hello(.init(rank: 0, model: "resnet8", dataEndpoint: "tcp://host0:6000")), from: CoordinatorHarness.connection(0), user: nil))
        guard case .welcome(let v)? = plain.sent(to: 0).last else { Issue.record("no answer"); return }
        #expect(!v.accepted && v.reason?.contains("network.exchange: coordinator") == true)
    }

    // MARK: A peer

    static func others(_ p: PeerHarness, _ g: Int, ranks: [Int]) -> PeerCore.Event {
        .received(.others(.init(rank: p.core.rank, globalStep: g, ranks: ranks, waitSeconds: 0.25), tensors: []))
    }

    @Test func aPeerSendsItsOutputsToTheOthersAndWordToTheCoordinator() throws {
        var p = PeerHarness(try Self.meshConfiguration())
        p.join()
        #expect(p.sent.contains { if case .hello(let h) = $0 { h.dataEndpoint == CoordinatorHarness.dataEndpoint(0) } else { false } })
        let step = PeerHarness.meshStep(0, attempt: 40)
        p.handle(.received(.step(step, teacher: [])), after: 0.5)
        let outputs = p.core.configuration.outputLayout.expected(batchSize: 4).map {
            TensorPayload(name: $0.name, shape: $0.shape, values: Array(repeating: 1, count: $0.shape.reduce(1, *)))
        }
        p.handle(.done(.forwarded(step, outputs: outputs)), after: 0.1)
        guard case (.outputs(let body, let tensors), let targets)? = p.published.last else { Issue.record("nothing published"); return }
        #expect(body.rank == 0 && body.globalStep == 0 && body.attempt == 40 && tensors == outputs)
        #expect(targets == [.init(rank: 1, endpoint: CoordinatorHarness.dataEndpoint(1)), .init(rank: 2, endpoint: CoordinatorHarness.dataEndpoint(2))])
        guard case .outputs(let word, let none)? = p.sent.last else { Issue.record("no word to the coordinator"); return }
        #expect(word == body && none.isEmpty)
        p.handle(Self.others(p, 0, ranks: [1, 2]), after: 1)
        p.handle(p.meshOutputs(from: 2, 0, attempt: 40, value: 2))
        #expect(!p.work.contains { if case .finish = $0 { true } else { false } }, "peer 1's outputs are still missing")
        p.handle(p.meshOutputs(from: 1, 0, attempt: 40, value: 1), after: 0.5)
        guard case .finish(_, let others, nil, let timing)? = p.work.last else { Issue.record("no finish"); return }
        #expect(others.map(\.rank) == [1, 2] && others[0].logits.allSatisfy { $0 == 1 } && others[1].embedding?.allSatisfy { $0 == 2 } == true)
        #expect(timing.waited == 0.25 && abs(timing.exchange - 1.25) < 1e-9)
    }

    @Test func outputsThatArriveBeforeTheStepAreKeptForIt() throws {
        var p = PeerHarness(try Self.meshConfiguration())
        p.join()
        p.handle(p.meshOutputs(from: 1, 0, attempt: 7))
        p.handle(p.meshOutputs(from: 2, 0, attempt: 7))
        let step = PeerHarness.meshStep(0, attempt: 7)
        p.handle(.received(.step(step, teacher: [])))
        p.handle(.done(.forwarded(step, outputs: [])))
        p.handle(Self.others(p, 0, ranks: [1, 2]))
        guard case .finish(_, let others, _, _)? = p.work.last else { Issue.record("no finish"); return }
        #expect(others.map(\.rank) == [1, 2])
    }

    @Test func strangersLeftoversAndMalformedOutputsOnTheMeshAreNotUsed() throws {
        var p = PeerHarness(try Self.meshConfiguration())
        p.join()
        let step = PeerHarness.meshStep(0, attempt: 40)
        p.handle(.received(.step(step, teacher: [])))
        p.handle(.done(.forwarded(step, outputs: [])))
        p.handle(Self.others(p, 0, ranks: [1, 2]))
        p.handle(p.meshOutputs(from: 0, 0, attempt: 40))  // claims to be this peer
        p.handle(p.meshOutputs(from: 5, 0, attempt: 40))  // no such rank
        p.handle(p.meshOutputs(from: 1, 0, attempt: 40, user: "peer-2"))  // peer 2's key, rank 1's name
        #expect(p.logs.filter { $0.message == "dropped outputs from the mesh" }.count == 3)
        p.handle(p.meshOutputs(from: 1, 0, attempt: 39))  // an earlier sending of the step
        p.handle(p.meshOutputs(from: 2, 0, attempt: 40, batch: 3))  // the wrong shape
        p.handle(p.meshOutputs(from: 1, 0, attempt: 40, user: "peer-1"))
        #expect(p.logged("dropped invalid outputs from the mesh"))
        #expect(!p.work.contains { if case .finish = $0 { true } else { false } })
        p.handle(p.meshOutputs(from: 2, 0, attempt: 40))
        guard case .finish(_, let others, _, _)? = p.work.last else { Issue.record("no finish"); return }
        #expect(others.map(\.rank) == [1, 2] && others.allSatisfy { $0.logits.count == 40 })
    }

    @Test func othersWithTensorsOrNamingNonParticipantsAreDropped() throws {
        var p = PeerHarness(try Self.meshConfiguration())
        p.join()
        let step = PeerHarness.meshStep(0, attempt: 1, ranks: [0, 1])
        p.handle(.received(.step(step, teacher: [])))
        p.handle(.done(.forwarded(step, outputs: [])))
        p.handle(.received(p.others(0, ranks: [1])))  // tensors: the coordinator mode's others
        p.handle(Self.others(p, 0, ranks: [1, 2]))  // rank 2 did not take part
        #expect(p.logs.filter { $0.message == "dropped invalid others" }.count == 2)
        p.handle(Self.others(p, 0, ranks: [1]))
        p.handle(p.meshOutputs(from: 1, 0, attempt: 1))
        guard case .finish(_, let others, _, _)? = p.work.last else { Issue.record("no finish"); return }
        #expect(others.map(\.rank) == [1])
    }

    @Test func outputsThatNeverComeOverTheMeshMakeThePeerRejoin() throws {
        var p = PeerHarness(try Self.meshConfiguration())
        p.join()
        let step = PeerHarness.meshStep(0, attempt: 3)
        p.handle(.received(.step(step, teacher: [])))
        p.handle(.done(.forwarded(step, outputs: [])))
        p.handle(Self.others(p, 0, ranks: [1, 2]))
        p.handle(p.meshOutputs(from: 1, 0, attempt: 3))
        for _ in 0..<25 {
            p.handle(.received(.heartbeat(.init(rank: nil, sequence: 0))), after: 10)
            p.handle(.timer(.check))
        }
        #expect(p.reconnects == 1 && p.logs.contains { $0.metadata["why"]?.contains("no outputs from peer(s) 2 for step 0 over the mesh") == true })
    }

    /// The coordinator counts a step done once every peer says its outputs are on their way, so the next
    /// step, a checkpoint or an epoch's end can overtake them: they wait for this step's end.
    @Test func whatOvertakesTheOthersOutputsWaitsForTheStepsEnd() throws {
        var p = PeerHarness(try Self.meshConfiguration())
        p.join()
        let step = PeerHarness.meshStep(3, attempt: 8)
        p.handle(.received(.step(step, teacher: [])))
        p.handle(.done(.forwarded(step, outputs: [])))
        p.handle(Self.others(p, 3, ranks: [1, 2]))
        p.handle(.received(.evaluate(.init(epoch: 0, globalStep: 4, test: false))))
        p.handle(.received(.step(PeerHarness.meshStep(4, attempt: 9), teacher: [])))
        #expect(p.reconnects == 0 && p.work.count == 1, "nothing before the step's end")
        p.handle(p.meshOutputs(from: 1, 3, attempt: 8))
        p.handle(p.meshOutputs(from: 2, 3, attempt: 8))
        guard case .finish(let finished, _, _, _)? = p.work.last else { Issue.record("no finish"); return }
        p.handle(.done(.finished(finished, status: p.status(4))))
        guard case .endEpoch(let e, nil)? = p.work.last else { Issue.record("no epoch end"); return }
        #expect(e.epoch == 0)
        p.handle(.done(.epochEnded(e)))
        guard case .forward(let next, _)? = p.work.last else { Issue.record("no next step"); return }
        #expect(next.globalStep == 4 && next.attempt == 9 && p.reconnects == 0)
    }

    /// Outputs of the step a peer is going back to are kept while it loads its checkpoint; outputs of steps
    /// far ahead, or past the run, are not held.
    @Test func outputsForTheStepAPeerGoesBackToAreKeptWhileItRewinds() throws {
        var p = PeerHarness(try Self.meshConfiguration(), done: 6)
        p.join()
        let step = PeerHarness.meshStep(4, attempt: 2)
        p.handle(.received(.step(step, teacher: [])))
        guard case .rewind(4)? = p.work.last else { Issue.record("no rewind"); return }
        p.handle(p.meshOutputs(from: 1, 4, attempt: 2))
        p.handle(p.meshOutputs(from: 2, 4, attempt: 2))
        p.handle(p.meshOutputs(from: 2, 3, attempt: 1))  // left behind
        p.handle(p.meshOutputs(from: 2, 8, attempt: 9))  // past the run's last step
        #expect(p.core.peerOutputs.count == 2)
        p.handle(.done(.rewound(to: 4)))
        p.handle(.done(.forwarded(step, outputs: [])))
        p.handle(Self.others(p, 4, ranks: [1, 2]))
        guard case .finish(let s, let others, _, _)? = p.work.last else { Issue.record("no finish"); return }
        #expect(s.globalStep == 4 && others.map(\.rank) == [1, 2])
    }
}
