import Testing
import NN

/// Expects two safetensors files to hold the same tensors, bit for bit (their metadata, which records
/// times, may differ).
public func expectIdentical(_ a: String, _ b: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let x = try SafeTensors.read(a), y = try SafeTensors.read(b)
    #expect(x.names == y.names, sourceLocation: sourceLocation)
    for name in x.names where y.entry(name) != nil {
        if x.entry(name)!.dtype.isFloat {
            #expect(try x.floats(name).scalars == y.floats(name).scalars, "\(name) differs: \(a) vs \(b)", sourceLocation: sourceLocation)
        } else {
            #expect(try x.integers(name) == y.integers(name), "\(name) differs: \(a) vs \(b)", sourceLocation: sourceLocation)
        }
    }
}
