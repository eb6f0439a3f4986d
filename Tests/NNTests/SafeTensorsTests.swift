import Foundation
import Testing
import Tensors
@testable import NN

@Suite struct SafeTensorsTests {
    @Test func roundTripsFloatsIntegersAndMetadata() throws {
        var file = SafeTensors(metadata: ["epoch": "3", "note": "quote \" and \\ slash"])
        file.add("w", floats: Tensor([1, -2.5, 3e-8, .greatestFiniteMagnitude], shape: [2, 2]))
        file.add("n", integers: [42], shape: [])
        file.add("e", floats: Tensor.zeros([0, 3]))
        let back = try SafeTensors.decode(file.encoded())
        #expect(back.names == ["w", "n", "e"])
        #expect(back.metadata == file.metadata)
        #expect(try back.floats("w").scalars == [1, -2.5, 3e-8, .greatestFiniteMagnitude])
        #expect(try back.floats("w").shape == [2, 2])
        #expect(try back.integers("n") == [42] && back.entry("n")!.shape == [])
        #expect(try back.floats("e").shape == [0, 3])
        #expect(throws: SafeTensorsError.self) { try back.integers("w") }
        #expect(throws: SafeTensorsError.missing("x")) { try back.floats("x") }
    }

    /// A checkpoint's recorded CRC-32 catches a flipped bit in its tensor data (zlib's CRC-32: "123456789" -> cbf43926).
    @Test func checksumDetectsCorruptData() throws {
        #expect(Array("123456789".utf8).withUnsafeBytes { CRC32.checksum($0) } == 0xCBF4_3926)
        var file = SafeTensors(metadata: ["epoch": "1"])
        file.add("w", floats: Tensor([1, 2, 3, 4], shape: [4]))
        var bytes = file.encoded(checksum: true)
        let back = try SafeTensors.decode(bytes)
        #expect(back.metadata[SafeTensors.checksumKey] != nil)
        #expect(try back.floats("w").scalars == [1, 2, 3, 4])
        bytes[bytes.count - 3] ^= 0x10
        #expect(throws: SafeTensorsError.self) { try SafeTensors.decode(bytes) }
        #expect(try SafeTensors.decode(file.encoded()).metadata[SafeTensors.checksumKey] == nil, "no checksum unless asked")
    }

    /// zlib's CRC-32 gives the checksums the earlier byte-at-a-time table loop gave (checkpoints written before
    /// stay valid bit for bit), over odd lengths and when continued piece by piece.
    @Test func checksumMatchesTheBytewiseDefinition() {
        let table: [UInt32] = (0..<256).map { n -> UInt32 in
            var c = UInt32(n)
            for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
            return c
        }
        func bytewise(_ bytes: [UInt8]) -> UInt32 {
            var c: UInt32 = ~0
            for b in bytes { c = table[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
            return ~c
        }
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        let bytes: [UInt8] = (0..<100_003).map { _ in
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return UInt8(truncatingIfNeeded: state >> 33)
        }
        for length in [0, 1, 7, 64, 1_000, 100_003] {
            let piece = Array(bytes[0..<length])
            #expect(piece.withUnsafeBytes { CRC32.checksum($0) } == bytewise(piece), "length \(length)")
        }
        let whole = bytes.withUnsafeBytes { CRC32.checksum($0) }
        let first = bytes[0..<12_345].withUnsafeBytes { CRC32.checksum($0) }
        #expect(bytes[12_345...].withUnsafeBytes { CRC32.checksum($0, continuing: first) } == whole)
    }

    /// A header whose shape overflows Int is rejected, not trapped on.
    @Test func overflowingShapeIsRejected() {
        let header = #"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}}"#
        var bytes = Data([UInt8(header.utf8.count), 0, 0, 0, 0, 0, 0, 0])
        bytes.append(Data(header.utf8))
        #expect(throws: SafeTensorsError.self) { try SafeTensors.decode(bytes) }
    }

    @Test func goldenBytes() {
        var file = SafeTensors()
        file.add("a", floats: Tensor([1, 2], shape: [2]))
        let bytes = file.encoded()
        let header = #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#
        let padded = header + String(repeating: " ", count: (8 - header.utf8.count % 8) % 8)
        var expected = Data([UInt8(padded.utf8.count), 0, 0, 0, 0, 0, 0, 0])
        expected.append(Data(padded.utf8))
        expected.append(Data([0, 0, 0x80, 0x3F, 0, 0, 0, 0x40]))   // 1.0f, 2.0f little-endian
        #expect(bytes == expected)
    }

    @Test func rejectsMalformedFiles() {
        #expect(throws: SafeTensorsError.self) { try SafeTensors.decode(Data([1, 2, 3])) }
        #expect(throws: SafeTensorsError.self) { try SafeTensors.decode(Data([200, 0, 0, 0, 0, 0, 0, 0, 0x7B])) }
        func file(_ header: String, _ payload: Int) -> Data {
            var d = Data([UInt8(header.utf8.count), 0, 0, 0, 0, 0, 0, 0]); d.append(Data(header.utf8))
            d.append(Data(count: payload)); return d
        }
        #expect(throws: SafeTensorsError.self) { try SafeTensors.decode(file("[1]", 0)) }
        #expect(throws: SafeTensorsError.self) {   // offsets do not match the shape
            try SafeTensors.decode(file(#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, 8))
        }
        #expect(throws: SafeTensorsError.self) {   // beyond the buffer
            try SafeTensors.decode(file(#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, 8))
        }
        #expect(throws: SafeTensorsError.self) {   // unsupported dtype
            try SafeTensors.decode(file(#"{"a":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}"#, 8))
        }
        #expect(throws: SafeTensorsError.self) {   // metadata values must be strings
            try SafeTensors.decode(file(#"{"__metadata__":{"a":1}}"#, 0))
        }
    }

    @Test func convertsHalfAndDoublePrecision() throws {
        func file(_ dtype: String, _ bytes: [UInt8]) -> Data {
            let header = #"{"a":{"dtype":"\#(dtype)","shape":[1],"data_offsets":[0,\#(bytes.count)]}}"#
            var d = Data([UInt8(header.utf8.count), 0, 0, 0, 0, 0, 0, 0]); d.append(Data(header.utf8)); d.append(Data(bytes))
            return d
        }
        #expect(try SafeTensors.decode(file("BF16", [0x80, 0x3F])).floats("a").scalars == [1])
        #expect(try SafeTensors.decode(file("F16", [0x00, 0x3C])).floats("a").scalars == [1])
        #expect(try SafeTensors.decode(file("F64", [0, 0, 0, 0, 0, 0, 0xF8, 0x3F])).floats("a").scalars == [1.5])
        #expect(try SafeTensors.decode(file("I32", [0xFF, 0xFF, 0xFF, 0xFF])).integers("a") == [-1])
    }

    @Test func modelRoundTripKeepsPyTorchKeysAndCounters() throws {
        let net = Architecture.resnet8.make(inputChannels: 1, seed: 3) as! ResNet
        net.bn1.numBatchesTracked.value = 17
        let file = net.safeTensors(metadata: ["model": "resnet8"])
        // num_batches_tracked right after running_var, as in PyTorch's state_dict.
        let reference = ReferenceKeys.shared.entries("resnet8").map(\.0)
        var withCounters: [String] = []
        for key in reference {
            withCounters.append(key)
            if key.hasSuffix("running_var") { withCounters.append(String(key.dropLast("running_var".count)) + "num_batches_tracked") }
        }
        #expect(file.names == withCounters)
        #expect(file.entry("bn1.num_batches_tracked")!.dtype == .i64)
        let path = NSTemporaryDirectory() + "cohort-roundtrip-\(getpid()).safetensors"
        try file.write(to: path)
        let other = Architecture.resnet8.make(inputChannels: 1, seed: 4) as! ResNet
        try other.load(try SafeTensors.read(path))
        #expect(other.bn1.numBatchesTracked.value == 17)
        for ((n1, t1), (n2, t2)) in zip(net.stateDict(), other.stateDict()) {
            #expect(n1 == n2 && t1.scalars == t2.scalars)
        }
        // A file for another architecture is refused with the offending keys named.
        let wrong = Architecture.resnet14.make(inputChannels: 1, seed: 0)
        #expect(throws: StateDictError.self) { try wrong.load(try SafeTensors.read(path)) }
    }

    @Test func atomicWriteReplacesAndLeavesNoTemporaryFiles() throws {
        let dir = NSTemporaryDirectory() + "cohort-atomic-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        try AtomicFile.write(Data("one".utf8), to: dir + "/sub/file")
        try AtomicFile.write(Data("two".utf8), to: dir + "/sub/file")
        #expect(try String(contentsOfFile: dir + "/sub/file", encoding: .utf8) == "two")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/sub") == ["file"])
        #expect(throws: AtomicFileError.self) { try AtomicFile.write(Data(), to: "/proc/cohort-cannot-write-here") }
    }
}
