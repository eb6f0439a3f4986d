import Foundation
import Testing
import CZlib
@testable import Data

/// gzip-compresses `data` with zlib (window bits 31: gzip wrapper).
func gzip(_ data: Data) -> Data {
    var stream = z_stream()
    precondition(deflateInit2_(&stream, 6, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY, ZLIB_VERSION,
                               Int32(MemoryLayout<z_stream>.size)) == Z_OK)
    defer { deflateEnd(&stream) }
    var input = [UInt8](data)
    var output = [UInt8](repeating: 0, count: data.count + 1024)
    input.withUnsafeMutableBufferPointer { i in
        output.withUnsafeMutableBufferPointer { o in
            stream.next_in = i.baseAddress; stream.avail_in = uInt(i.count)
            stream.next_out = o.baseAddress; stream.avail_out = uInt(o.count)
            precondition(deflate(&stream, Z_FINISH) == Z_STREAM_END)
        }
    }
    return Data(output[0..<Int(stream.total_out)])
}

/// An IDX file of unsigned bytes.
func idx(_ dimensions: [Int], _ values: [UInt8]) -> Data {
    var bytes: [UInt8] = [0, 0, 0x08, UInt8(dimensions.count)]
    for d in dimensions { bytes += [UInt8(d >> 24 & 255), UInt8(d >> 16 & 255), UInt8(d >> 8 & 255), UInt8(d & 255)] }
    return Data(bytes + values)
}

func temporaryDirectory(_ name: String) -> String {
    let path = NSTemporaryDirectory() + "cohort-tests-\(name)-\(getpid())"
    try? FileManager.default.removeItem(atPath: path)
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

@Suite struct IDXTests {
    @Test func parsesPlainAndGzip() throws {
        let values = (0..<24).map { UInt8($0) }
        let plain = idx([2, 3, 4], values)
        let dir = temporaryDirectory("idx")
        try plain.write(to: URL(fileURLWithPath: dir + "/a"))
        try gzip(plain).write(to: URL(fileURLWithPath: dir + "/a.gz"))
        for file in ["a", "a.gz"] {
            let read = try IDX.read(dir + "/" + file)
            #expect(read.dimensions == [2, 3, 4])
            #expect(read.bytes == values)
        }
    }

    @Test func rejectsMalformedFiles() throws {
        #expect(throws: DataSetError.self) { try IDX.parse(Data([1, 2, 3]), file: "x") }
        #expect(throws: DataSetError.self) { try IDX.parse(Data([0, 0, 0x0D, 1, 0, 0, 0, 1, 0, 0, 0, 0]), file: "x") }  // float type
        #expect(throws: DataSetError.self) { try IDX.parse(idx([2, 2], [1, 2, 3]), file: "x") }                      // short
        let dir = temporaryDirectory("idx-bad")
        let gz = gzip(idx([4], [1, 2, 3, 4]))
        try gz.prefix(gz.count - 6).write(to: URL(fileURLWithPath: dir + "/t.gz"))                                // truncated
        #expect(throws: DataSetError.self) { try IDX.read(dir + "/t.gz") }
    }
}

@Suite struct DataSetTests {
    @Test func missingDataSetSaysHowToGetIt() {
        do {
            _ = try DataSet.load(.fashionMNIST, split: .train, directory: "/nonexistent/fashion")
            Issue.record("expected an error")
        } catch let error as DataSetError {
            #expect(error.description.contains("train-images-idx3-ubyte"))
            #expect(error.description.contains("apt-get install dataset-fashion-mnist"))
        } catch { Issue.record("unexpected \(error)") }
        #expect(throws: DataSetError.self) { try DataSet.load(.cifar10, split: .train) }   // no directory given
        #expect(throws: DataSetError.unknownDataSet("imagenet")) { try DataSetKind(name: "imagenet") }
    }

    @Test func readsIDXDirectories() throws {
        let dir = temporaryDirectory("mnist")
        let pixels = (0..<(3 * 28 * 28)).map { UInt8($0 % 256) }
        try gzip(idx([3, 28, 28], pixels)).write(to: URL(fileURLWithPath: dir + "/t10k-images-idx3-ubyte.gz"))
        try idx([3], [7, 0, 9]).write(to: URL(fileURLWithPath: dir + "/t10k-labels-idx1-ubyte"))
        let set = try DataSet.load(.mnist, split: .test, directory: dir)
        #expect(set.count == 3 && set.labels == [7, 0, 9] && set.pixels == pixels)
        // A label count that does not match is reported.
        try idx([2], [7, 0]).write(to: URL(fileURLWithPath: dir + "/t10k-labels-idx1-ubyte"))
        #expect(throws: DataSetError.self) { try DataSet.load(.mnist, split: .test, directory: dir) }
    }

    @Test func readsCIFARBinaryFiles() throws {
        let dir10 = temporaryDirectory("cifar10"), dir100 = temporaryDirectory("cifar100")
        func record(_ labels: [UInt8], _ fill: UInt8) -> [UInt8] { labels + [UInt8](repeating: fill, count: 3072) }
        for b in 1...5 {
            try Data(record([UInt8(b)], UInt8(b)) + record([9], 200)).write(to: URL(fileURLWithPath: dir10 + "/data_batch_\(b).bin"))
        }
        try Data(record([3], 3)).write(to: URL(fileURLWithPath: dir10 + "/test_batch.bin"))
        let train = try DataSet.load(.cifar10, split: .train, directory: dir10)
        #expect(train.count == 10 && train.labels == [1, 9, 2, 9, 3, 9, 4, 9, 5, 9])
        #expect(train.pixels[3072] == 200 && train.imageSize == 3072)
        #expect(try DataSet.load(.cifar10, split: .test, directory: dir10).labels == [3])
        // CIFAR-100: coarse label first, the fine label is used.
        try Data(record([1, 57], 0) + record([2, 99], 0)).write(to: URL(fileURLWithPath: dir100 + "/train.bin"))
        #expect(try DataSet.load(.cifar100, split: .train, directory: dir100).labels == [57, 99])
        // A partial record is malformed; a missing file says where to get it.
        try Data(record([1, 5], 0).dropLast()).write(to: URL(fileURLWithPath: dir100 + "/test.bin"))
        #expect(throws: DataSetError.self) { try DataSet.load(.cifar100, split: .test, directory: dir100) }
        try FileManager.default.removeItem(atPath: dir10 + "/data_batch_3.bin")
        do {
            _ = try DataSet.load(.cifar10, split: .train, directory: dir10)
            Issue.record("expected an error")
        } catch let error as DataSetError {
            #expect(error.description.contains("data_batch_3.bin") && error.description.contains("cifar-10-binary"))
        }
    }

    /// The real data set, as Debian's `dataset-fashion-mnist` installs it (CI installs the package).
    @Test func readsDebianFashionMNIST() throws {
        let train = try DataSet.load(.fashionMNIST, split: .train)
        let test = try DataSet.load(.fashionMNIST, split: .test)
        #expect(train.count == 60_000 && test.count == 10_000)
        #expect((0..<10).allSatisfy { c in train.labels.filter { $0 == c }.count == 6000 })
        let mean = Double(train.pixels.prefix(28 * 28 * 1000).reduce(0) { $0 + Int($1) }) / (28 * 28 * 1000 * 255)
        #expect(abs(mean - 0.286) < 0.01)
        #expect(train.prefix(100).count == 100 && train.prefix(100).labels == Array(train.labels.prefix(100)))
    }
}
