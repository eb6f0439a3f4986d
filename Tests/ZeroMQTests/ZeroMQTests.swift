import Foundation
import Testing
@testable import ZeroMQ

@Suite struct ZeroMQTests {
    @Test func multipartRoundTripOverInproc() throws {
        let context = try ZMQContext()
        let server = try ZMQSocket(context, type: .router)
        try server.bind("inproc://roundtrip")
        let client = try ZMQSocket(context, type: .dealer)
        try client.setRoutingID(Array("peer-1".utf8))
        try client.connect("inproc://roundtrip")
        let payload: [Float] = [1, 2.5, -3]
        try payload.withUnsafeBytes { try client.send([UnsafeRawBufferPointer(start: nil, count: 0), $0]) }
        try server.setReceiveTimeout(milliseconds: 2000)
        let frames = try #require(try server.receive())
        #expect(frames.count == 3)
        #expect(frames[0] == Array("peer-1".utf8), "a ROUTER prefixes the sender's routing id")
        #expect(frames[1].isEmpty)
        let floats = frames[2].withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        #expect(floats == payload)
        // Reply through the routing id.
        try server.send([frames[0], Array("ok".utf8)])
        try client.setReceiveTimeout(milliseconds: 2000)
        #expect(try client.receive() == [Array("ok".utf8)])
    }

    @Test func tcpLoopbackWithAWildcardPort() throws {
        let context = try ZMQContext()
        let pull = try ZMQSocket(context, type: .pull)
        try pull.bind("tcp://127.0.0.1:*")
        let endpoint = pull.lastEndpoint
        #expect(endpoint.hasPrefix("tcp://127.0.0.1:"))
        let push = try ZMQSocket(context, type: .push)
        try push.connect(endpoint)
        try push.send([Array("hello".utf8), Array("world".utf8)])
        #expect(try pull.waitForMessage(milliseconds: 5000))
        #expect(try pull.receive() == [Array("hello".utf8), Array("world".utf8)])
    }

    @Test func receiveAndPollTimeOut() throws {
        let context = try ZMQContext()
        let pull = try ZMQSocket(context, type: .pull)
        try pull.bind("inproc://quiet")
        try pull.setReceiveTimeout(milliseconds: 20)
        #expect(try pull.receive() == nil)
        #expect(try pull.receive(dontWait: true) == nil)
        #expect(try ZMQSocket.poll([pull], milliseconds: 10) == [false])
    }

    @Test func errorsAreSwiftErrors() throws {
        let context = try ZMQContext()
        let socket = try ZMQSocket(context, type: .pull)
        #expect(throws: ZeroMQError.self) { try socket.bind("nonsense://x") }
        #expect(throws: ZeroMQError.self) { try socket.connect("tcp://") }
        let a = try ZMQSocket(context, type: .pull)
        try a.bind("inproc://taken")
        let b = try ZMQSocket(context, type: .pull)
        do {
            try b.bind("inproc://taken")
            Issue.record("a second bind to the same endpoint must fail")
        } catch let error as ZeroMQError {
            #expect(error.description.contains("inproc://taken"))
        }
    }

    @Test func oversizedMessagesAreDropped() throws {
        let context = try ZMQContext()
        let pull = try ZMQSocket(context, type: .pull)
        try pull.setMaximumMessageSize(bytes: 64)
        try pull.bind("tcp://127.0.0.1:*")
        let push = try ZMQSocket(context, type: .push)
        try push.connect(pull.lastEndpoint)
        try push.send([[UInt8](repeating: 7, count: 1000)])
        // The receiver disconnects a peer that exceeds the limit: nothing arrives.
        #expect(try pull.waitForMessage(milliseconds: 300) == false)
    }

    @Test func curveEncryptedConnection() throws {
        let serverKeys = try CurveKeyPair.generate(), clientKeys = try CurveKeyPair.generate()
        #expect(serverKeys.publicKey.count == 40 && serverKeys.secretKey.count == 40)
        #expect(try CurveKeyPair.publicKey(forSecret: serverKeys.secretKey) == serverKeys.publicKey)
        let context = try ZMQContext()
        let server = try ZMQSocket(context, type: .pull)
        try server.makeCurveServer(secretKey: serverKeys.secretKey)
        try server.bind("tcp://127.0.0.1:*")
        let client = try ZMQSocket(context, type: .push)
        try client.makeCurveClient(serverKey: serverKeys.publicKey, keys: clientKeys)
        try client.connect(server.lastEndpoint)
        try client.send([Array("secret".utf8)])
        #expect(try server.waitForMessage(milliseconds: 5000))
        #expect(try server.receive() == [Array("secret".utf8)])
        // A client with the wrong server key never gets through.
        let stranger = try ZMQSocket(context, type: .push)
        try stranger.makeCurveClient(serverKey: clientKeys.publicKey, keys: try CurveKeyPair.generate())
        try stranger.connect(server.lastEndpoint)
        try stranger.send([Array("intrusion".utf8)], dontWait: true)
        #expect(try server.waitForMessage(milliseconds: 300) == false)
    }
}
