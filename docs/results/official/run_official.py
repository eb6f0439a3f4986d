#!/usr/bin/env python3
"""Cohort's comparison setting, trained in PyTorch on the CPU with the official implementations.

One method, one seed, one JSON result. The official code is imported at run time from clones whose paths
are arguments (nothing of it is copied here); the few places where it does not run on current PyTorch on a
CPU, or on 28x28 one-channel images, are fixed at run time by the functions under "Runtime fixes" below
(listed in README.md). Everything else — the data subset, normalisation, augmentation, the m-per-class
sampler, SGD, the per-step cosine schedule, how the losses combine, the teacher's weight schedule — follows
Cohort's Swift sources (README.md says where each comes from and where this pipeline knowingly differs).

    python3 docs/results/official/run_official.py --method mcl2 --seed 0 \\
        --train-limit 7680 --test-limit 5000 --epochs 3 \\
        --repdistiller-repo /tmp/official/RepDistiller --mcl-repo /tmp/official/MCL --out result.json

Methods: alone, kd, crcd, crcd+kd, rrd, rrd+kd, mcl2, mcl2-nologit, mcl4, mcl4-nologit, lmcl2, mcl2+kd,
mcl2+crcd. Every method needs --repdistiller-repo (the networks); MCL rows --mcl-repo, lmcl2 also
--lmcl-repo, CRCD rows (and the teacher's weight schedule of every teacher row) --crcd-repo, RRD rows
--distillers-repo; teacher rows --teacher-arch and --teacher-checkpoint (a safetensors file of `cohort train`).
"""
import argparse, contextlib, gzip, importlib, importlib.util, io, json, math, os, sys, time, types

import numpy as np

METHODS = ["alone", "kd", "crcd", "crcd+kd", "rrd", "rrd+kd", "mcl2", "mcl2-nologit", "mcl4", "mcl4-nologit", "lmcl2",
           "mcl2+kd", "mcl2+crcd"]
TEACHER_LOSSES = {"kd": ["kd"], "crcd": ["crcd"], "crcd+kd": ["crcd", "kd"], "rrd": ["rrd"], "rrd+kd": ["rrd", "kd"],
                  "mcl2+kd": ["kd"], "mcl2+crcd": ["crcd"]}

# Fashion-MNIST as Cohort reads it (Sources/Data/DataSet.swift): fixed mean and deviation of the whole
# training set (not of the subset), random crop with zero padding 2, no flip.
MEAN, STD, PADDING = 0.2860, 0.3530, 2


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", required=True, choices=METHODS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--student", default="resnet8", help="a RepDistiller CIFAR model: resnet8, resnet20, resnet8x4, wrn_16_2, ...")
    ap.add_argument("--teacher-arch", default="resnet56")
    ap.add_argument("--teacher-checkpoint", help="safetensors state dict of the teacher (Cohort's checkpoints/last.safetensors)")
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--train-limit", type=int, help="train on the first N training images")
    ap.add_argument("--test-limit", type=int, help="evaluate on the first N test images")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--eval-batch", type=int, default=500)
    ap.add_argument("--eval-every", type=int, default=1, help="epochs between test-set evaluations (the last always), as Cohort's evaluation_every")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="result.json")
    # the official repositories (clones)
    ap.add_argument("--repdistiller-repo", help="HobbitLong/RepDistiller: the networks, KD")
    ap.add_argument("--mcl-repo", help="winycg/MCL: SupMCL loss, Embed heads, DistillKL for logit distillation")
    ap.add_argument("--lmcl-repo", help="winycg/L-MCL: Auxiliary_Classifier, its SupMCL and Embed (lmcl2)")
    ap.add_argument("--crcd-repo", help="Lechatelia/CRCD: CRCDLoss, get_grad_loss, adjust_mimic_loss_weight")
    ap.add_argument("--distillers-repo", help="giakoumoglou/distillers: RRDLoss (cifar/distillers/RRD.py)")
    # MCL settings (Cohort's defaults)
    ap.add_argument("--tau", type=float, default=0.07, help="MCL similarity temperature (Cohort: 0.07; main_cifar.py's default is 0.1)")
    ap.add_argument("--mcl-T", type=float, default=3.0, help="MCL soft terms' and logit distillation's temperature")
    ap.add_argument("--vcl", type=float, default=0.1)
    ap.add_argument("--soft-vcl", type=float, default=1.0)
    ap.add_argument("--icl", type=float, default=0.1)
    ap.add_argument("--soft-icl", type=float, default=1.0)
    ap.add_argument("--layer-weights", default="1,1,1", help="lmcl2: weights of branch 1, branch 2, final embedding")
    ap.add_argument("--logit-kd-last-only", action="store_true",
                    help="MCL x4 with logits: distil only the last network, as main_cifar.py does for --number-net > 2 "
                         "(Cohort distils every network)")
    # collapse probes
    ap.add_argument("--soft-weight", type=float, default=1.0, help="multiplies both soft terms' weights (soft VCL, soft ICL)")
    ap.add_argument("--soft-ramp-epochs", type=float, default=0.0,
                    help="the soft terms' weight ramps linearly from 0 over the first E epochs (Cohort's mcl.soft_ramp_epochs)")
    # teacher settings (Cohort's defaults)
    ap.add_argument("--kd-weight", type=float, default=0.9)
    ap.add_argument("--kd-T", type=float, default=4.0)
    ap.add_argument("--crcd-negatives", type=int, default=500)
    ap.add_argument("--crcd-T", type=float, default=0.05)
    ap.add_argument("--crcd-momentum", type=float, default=0.5)
    ap.add_argument("--crcd-sampling", choices=["uniform", "other-class"], default="uniform",
                    help="CRCD negatives: uniform over the training set (Cohort) or from the other classes (the CRCD "
                         "repository's data set, mode 'exact')")
    ap.add_argument("--crcd-forward", choices=["patched", "official"], default="patched",
                    help="ContrastMemory.forward: the memory-light exact re-expression (default) or the original, "
                         "which forms B x B x (K+1) x 128 tensors (4.2 GB each at B=128, K=500)")
    ap.add_argument("--rrd-keys", type=int, default=16384)
    ap.add_argument("--rrd-T-student", type=float, default=0.1)
    ap.add_argument("--rrd-T-teacher", type=float, default=0.02)
    a = ap.parse_args(argv)
    a.copies = 4 if a.method.startswith("mcl4") else 2 if a.method.startswith(("mcl2", "lmcl2")) else 1
    a.mcl = a.copies > 1
    a.logit = 1.0 if a.mcl and not a.method.endswith("nologit") else 0.0
    a.layerwise = a.method == "lmcl2"
    a.teacher_losses = TEACHER_LOSSES.get(a.method, [])
    a.layer_weights = [float(x) for x in a.layer_weights.split(",")]
    need = {"--repdistiller-repo": a.repdistiller_repo}
    if a.mcl and not a.layerwise:
        need["--mcl-repo"] = a.mcl_repo
    if a.layerwise:
        need["--lmcl-repo"] = a.lmcl_repo
    if a.teacher_losses:
        need["--teacher-checkpoint"] = a.teacher_checkpoint
        need["--crcd-repo"] = a.crcd_repo          # adjust_mimic_loss_weight, the teacher-weight schedule
    if "rrd" in a.teacher_losses:
        need["--distillers-repo"] = a.distillers_repo
    missing = [k for k, v in need.items() if not v]
    if missing:
        ap.error(f"--method {a.method} needs {', '.join(missing)}")
    if a.rrd_keys % a.batch_size:
        a.rrd_keys -= a.rrd_keys % a.batch_size    # as comparison.py: the FIFO queue takes whole batches
    return a


# ----------------------------------------------------------------------------------------------------------
# Importing the official code from the clones, each file under a name of its own (several repositories
# have top-level packages called `models`, `losses`, `helper`, `utils`, which would shadow each other).

def load_module(name, path):
    if name in sys.modules:
        return sys.modules[name]
    if not os.path.isfile(path):
        sys.exit(f"missing {path}: is the clone's path right? (see docs/results/official/README.md)")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_package(name, directory):
    """A package directory (with relative imports inside) under the name `name`."""
    if name in sys.modules:
        return sys.modules[name]
    init = os.path.join(directory, "__init__.py")
    if not os.path.isfile(init):
        sys.exit(f"missing {init}: is the clone's path right? (see docs/results/official/README.md)")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[directory])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Official:
    """The official modules this run uses, loaded on demand."""

    def __init__(self, a):
        self.a = a

    def repdistiller_resnet(self):
        return load_module("official_repdistiller_resnet", os.path.join(self.a.repdistiller_repo, "models/resnet.py"))

    def repdistiller_wrn(self):
        m = load_module("official_repdistiller_wrn", os.path.join(self.a.repdistiller_repo, "models/wrn.py"))
        fix_wrn_pooling(m)
        return m

    def repdistiller_kd(self):
        return load_module("official_repdistiller_kd", os.path.join(self.a.repdistiller_repo, "distiller_zoo/KD.py"))

    def mcl_loss(self):
        return load_module("official_mcl_loss", os.path.join(self.a.mcl_repo, "losses/cifar_sup_mcl_loss.py"))

    def mcl_utils(self):
        return load_module("official_mcl_utils", os.path.join(self.a.mcl_repo, "utils.py"))

    def lmcl_loss(self):
        return load_module("official_lmcl_loss", os.path.join(self.a.lmcl_repo, "losses/cifar_sup_layer_mcl_meta_loss.py"))

    def lmcl_resnet(self):
        return load_module("official_lmcl_resnet", os.path.join(self.a.lmcl_repo, "models/lmcl_resnet_cifar.py"))

    def lmcl_wrn(self):
        return load_module("official_lmcl_wrn", os.path.join(self.a.lmcl_repo, "models/lmcl_wrn_cifar.py"))

    def crcd(self):
        load_package("official_crcd", os.path.join(self.a.crcd_repo, "crcd"))     # its __init__.py is empty
        criterion = importlib.import_module("official_crcd.criterion")            # imports .memory
        fix_crcd(sys.modules["official_crcd.memory"], self.a.crcd_forward)
        return criterion

    def lmcl_utils(self):
        return load_module("official_lmcl_utils", os.path.join(self.a.lmcl_repo, "utils.py"))

    def crcd_loops(self):
        load_package("official_crcd_helper", os.path.join(self.a.crcd_repo, "helper"))
        return load_module("official_crcd_helper.loops", os.path.join(self.a.crcd_repo, "helper/loops.py"))

    def rrd(self):
        return load_module("official_distillers_rrd", os.path.join(self.a.distillers_repo, "cifar/distillers/RRD.py"))


# ----------------------------------------------------------------------------------------------------------
# Runtime fixes to the official code (README.md, "Fixes to the official code").

def fix_cuda():
    """Fix 1. Hard `.cuda()` calls (MCL's and L-MCL's SupMCL: `torch.eye(n).cuda()`; CRCD's ContrastMemory:
    `self.multinomial.cuda()`) fail on a CPU-only PyTorch. Without CUDA, `.cuda()` returns its tensor or
    module unchanged."""
    import torch
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
        torch.nn.Module.cuda = lambda self, *args, **kwargs: self


def fix_stem_and_pooling(model, family):
    """Fixes 2 and 3, on one network instance. The official CIFAR networks take 3 channels and pool the
    8x8 map of a 32x32 input with a fixed 8x8 window; Fashion-MNIST is 1x28x28 and ends at 7x7. The first
    convolution is replaced by a 1-channel one of the same shape otherwise (same initialisation as the
    network's own: Kaiming normal, fan-out), and the ResNets' `avgpool` by a global average pool — what
    Cohort's networks do (`Sources/NN/Models/ResNet.swift`: any input size and channel count)."""
    import torch.nn as nn
    old = model.conv1
    model.conv1 = nn.Conv2d(1, old.out_channels, kernel_size=old.kernel_size, stride=old.stride, padding=old.padding,
                            bias=old.bias is not None)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    if family == "resnet":
        model.avgpool = nn.AdaptiveAvgPool2d(1)
    return model


def fix_wrn_pooling(module):
    """Fix 3 for RepDistiller's WideResNet, whose forward calls `F.avg_pool2d(out, 8)`: the module's `F`
    becomes torch.nn.functional with `avg_pool2d` pooling globally."""
    import torch.nn.functional as F
    if isinstance(module.F, types.SimpleNamespace):
        return
    shim = types.SimpleNamespace(**{k: getattr(F, k) for k in dir(F) if not k.startswith("__")})
    shim.avg_pool2d = lambda x, *args, **kwargs: F.adaptive_avg_pool2d(x, 1)
    module.F = shim


def fix_crcd(memory_module, mode):
    """Fix 4. CRCD's `ContrastMemory.forward` forms B x B x (K+1) x d relation tensors (4.2 GB each at
    B = 128, K = 500, d = 128; about 17 GB kept for the backward pass with CRCD on features and gradient
    elements). It is replaced by `crcd_memory_forward`, the same function computed without that tensor
    (checked against the original at every start, `check_crcd_patch`). `--crcd-forward official` keeps
    the original."""
    if mode == "patched" and not hasattr(memory_module.ContrastMemory, "official_forward"):
        memory_module.ContrastMemory.official_forward = memory_module.ContrastMemory.forward
        memory_module.ContrastMemory.forward = crcd_memory_forward


def crcd_relation_scores(v, memory, y, idx, T):
    """`exp(<w, r> / T)` of the official ContrastMemory, as a (B*B, K+1, 1) tensor in its layout (row a*B + n:
    sample a against anchor n), with

        r[a,n]   = normalize(v[a] - M[y[n]] + 1e-6)               (in the graph through v)
        w[a,n,k] = normalize(M[idx[a,k]] - M[y[n]] + 1e-6)        (constants)

    computed as <w, r> = (<P, r> - <A, r> + 1e-6 sum(r)) / |P - A + 1e-6| with P = M[idx[a,k]], A = M[y[n]]:
    the numerator by one batched product of [r, 1e-6 sum(r) - <A, r>] with [P, 1], the squared norm
    |P|^2 + 2e sum(P) + d e^2 + |A|^2 - 2e sum(A) - 2<P, A> by one float64 product of [P, c_P, 1] with
    [-2A, 1, c_A]. Where idx[a,k] == y[n] the official difference is exactly 1e-6 * ones, so w = ones/sqrt(d)
    and <w, r> = sum(r)/sqrt(d) there, as the original computes it."""
    import torch
    import torch.nn.functional as F
    b, d = v.shape
    k1 = idx.shape[1]
    eps = 1e-6
    anchors = torch.index_select(memory, 0, y.view(-1)).detach()                       # n, d
    rows = torch.index_select(memory, 0, idx.reshape(-1)).detach().view(b, k1, d)      # a, k, d
    r = F.normalize(v.unsqueeze(1) - anchors.unsqueeze(0) + eps, p=2, dim=2)           # a, n, d
    r_sum = r.sum(2, keepdim=True)
    r_extra = eps * r_sum - (r * anchors.unsqueeze(0)).sum(2, keepdim=True)             # a, n, 1
    numerator = torch.bmm(torch.cat([r, r_extra], 2),
                          torch.cat([rows, torch.ones(b, k1, 1)], 2).transpose(1, 2))   # a, n, k
    with torch.no_grad():
        p64, a64 = rows.double(), anchors.double()
        c_p = (p64 * p64).sum(2, keepdim=True) + 2 * eps * p64.sum(2, keepdim=True) + d * eps * eps
        c_a = (a64 * a64).sum(1, keepdim=True) - 2 * eps * a64.sum(1, keepdim=True)
        left = torch.cat([-2 * a64, torch.ones(b, 1, dtype=torch.float64), c_a], 1)        # n, d+2
        right = torch.cat([p64, c_p, torch.ones(b, k1, 1, dtype=torch.float64)], 2)        # a, k, d+2
        square = torch.matmul(left.unsqueeze(0), right.transpose(1, 2))                   # a, n, k
        norm = square.clamp_min_(0).sqrt_().float().clamp_min_(1e-12)
        ia, in_, ik = (idx.view(b, 1, k1) == y.view(1, b, 1)).nonzero(as_tuple=True)    # the few degenerate entries
    cosine = (numerator / norm).index_put((ia, in_, ik), r_sum[ia, in_, 0] / math.sqrt(d))
    return torch.exp(cosine * (1 / T)).reshape(b * b, k1, 1)


def crcd_memory_forward(self, v1, v2, y, idx=None):
    """The official ContrastMemory.forward with its two relation scores computed by crcd_relation_scores;
    the index draw, the normalisers Z (set on the first call), the division and the memory update are the
    original's."""
    import torch
    K = int(self.params[0].item())
    T = self.params[1].item()
    Z_v1 = self.params[2].item()
    Z_v2 = self.params[3].item()
    momentum = self.params[4].item()
    batchSize = v1.size(0)
    outputSize = self.memory_v1.size(0)
    if idx is None:
        idx = self.multinomial.draw(batchSize * (self.K + 1)).view(batchSize, -1)
        idx.select(1, 0).copy_(y.data)
    out_v1 = crcd_relation_scores(v1, self.memory_v2, y, idx, T)
    out_v2 = crcd_relation_scores(v2, self.memory_v1, y, idx, T)
    if Z_v1 < 0:
        self.params[2] = out_v1.detach().mean() * outputSize
        Z_v1 = self.params[2].item()
    if Z_v2 < 0:
        self.params[3] = out_v2.detach().mean() * outputSize
        Z_v2 = self.params[3].item()
    out_v1 = torch.div(out_v1, Z_v1).contiguous()
    out_v2 = torch.div(out_v2, Z_v2).contiguous()
    with torch.no_grad():
        l_pos = torch.index_select(self.memory_v1, 0, y.view(-1))
        l_pos.mul_(momentum)
        l_pos.add_(torch.mul(v1, 1 - momentum))
        l_norm = l_pos.pow(2).sum(1, keepdim=True).pow(0.5)
        self.memory_v1.index_copy_(0, y, l_pos.div(l_norm))
        ab_pos = torch.index_select(self.memory_v2, 0, y.view(-1))
        ab_pos.mul_(momentum)
        ab_pos.add_(torch.mul(v2, 1 - momentum))
        ab_norm = ab_pos.pow(2).sum(1, keepdim=True).pow(0.5)
        self.memory_v2.index_copy_(0, y, ab_pos.div(ab_norm))
    return out_v1, out_v2


def check_crcd_patch(memory_module):
    """Runs the original and the patched ContrastMemory.forward on a small case (two calls, so the second
    uses the stored normalisers and moved memories) and returns the largest relative difference of the
    outputs, the input gradients of an NCE-like scalar and the memories."""
    import copy
    import torch
    cls = memory_module.ContrastMemory
    original = getattr(cls, "official_forward", cls.forward)
    patched = crcd_memory_forward
    g = torch.Generator().manual_seed(12345)
    b, k, d, n = 8, 24, 128, 40
    base = cls(d, n, k, 0.05, 0.5)
    worst = 0.0

    def rel(x, y):
        return float((x - y).abs().max() / y.abs().max().clamp_min(1e-30))

    states = [copy.deepcopy(base), copy.deepcopy(base)]
    quiet = contextlib.redirect_stdout(io.StringIO())     # the original prints its normalisers
    for call in range(2):
        y = torch.randperm(n, generator=g)[:b]
        idx = torch.randint(0, n, (b, k + 1), generator=g)
        idx[:, 0] = y
        idx[1, 3] = y[5]                     # a contrast row equal to another sample's anchor
        v1 = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
        v2 = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
        results = []
        for state, forward in zip(states, (original, patched)):
            x1, x2 = v1.clone().requires_grad_(), v2.clone().requires_grad_()
            with quiet:
                o1, o2 = forward(state, x1, x2, y, idx)
            (o1.log().mean() + 0.5 * o2.log().mean()).backward()
            results.append((o1.detach(), o2.detach(), x1.grad, x2.grad, state.memory_v1.clone(), state.memory_v2.clone()))
        for x, y_ in zip(results[1], results[0]):
            worst = max(worst, rel(x, y_))
    return worst


# ----------------------------------------------------------------------------------------------------------
# Data: Cohort's pipeline (Sources/Data).

def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_split(directory, split, limit):
    prefix = "train" if split == "train" else "t10k"

    def locate(name):
        for candidate in (name, name + ".gz"):
            p = os.path.join(directory, candidate)
            if os.path.exists(p):
                return p
        sys.exit(f"missing {os.path.join(directory, name)}[.gz] (Debian: apt-get install dataset-fashion-mnist)")
    images = read_idx(locate(f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(locate(f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    if limit:                                    # the first N, as DataSet.prefix
        images, labels = images[:limit], labels[:limit]
    return images[:, None, :, :].copy(), labels.copy()


def rng(seed, *coordinates):
    """A numpy generator for (seed, purpose, epoch, step, ...): every random choice depends only on where it
    is made, as Cohort's RandomStream (not the same numbers)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *coordinates])))


PURPOSE_CLASS_SAMPLER, PURPOSE_AUGMENT, PURPOSE_CONTRAST = 3, 2, 5


def m_per_class_batches(labels, batch_size, seed, epoch, m=2):
    """Cohort's MPerClassSampler.batches (Sources/Data/Sampler.swift), step for step: each batch takes
    min(classes, batch/m) classes from a shuffled rotation, m samples of each, then fills the rest from the
    same classes in turn; samples of a class come without replacement from a per-class shuffle renewed when
    used up; the batch is shuffled; an epoch has max(1, N // batch) batches."""
    by_class = {}
    for i, c in enumerate(labels.tolist()):
        by_class.setdefault(c, []).append(i)
    classes = sorted(by_class)
    g = rng(seed, PURPOSE_CLASS_SAMPLER, epoch)
    pools = {c: [] for c in classes}

    def draw(c):
        if not pools[c]:
            pools[c] = [by_class[c][j] for j in g.permutation(len(by_class[c]))]
        return pools[c].pop()
    rotation = []
    per_batch = min(len(classes), max(1, batch_size // m))
    batches = []
    for _ in range(max(1, len(labels) // batch_size)):
        chosen = []
        while len(chosen) < per_batch:
            if not rotation:
                rotation = [classes[j] for j in g.permutation(len(classes))]
            c = rotation.pop()
            if c not in chosen:
                chosen.append(c)
        batch = [draw(c) for c in chosen for _ in range(m)]
        k = 0
        while len(batch) < batch_size:
            batch.append(draw(chosen[k % len(chosen)]))
            k += 1
        batches.append([batch[j] for j in g.permutation(len(batch))])
    return batches


def normalise(pixels):
    """uint8 -> (v / 255 - mean) / std, as BatchAssembler's table."""
    import torch
    return (torch.from_numpy(pixels).float() / 255 - MEAN) / STD


def assemble(images, indices, seed, epoch, step):
    """An augmented training batch: each image shifted by (dy, dx) uniform in [-2, 2] with zero pixels
    coming in (zero *before* normalisation, so they become -mean/std), then normalised — BatchAssembler's
    random crop with padding 2; no flip for the 28x28 sets."""
    g = rng(seed, PURPOSE_AUGMENT, epoch, step)
    offsets = g.integers(-PADDING, PADDING + 1, size=(len(indices), 2))
    n, c, h, w = len(indices), images.shape[1], images.shape[2], images.shape[3]
    padded = np.zeros((n, c, h + 2 * PADDING, w + 2 * PADDING), dtype=np.uint8)
    padded[:, :, PADDING:PADDING + h, PADDING:PADDING + w] = images[indices]
    out = np.empty((n, c, h, w), dtype=np.uint8)
    for i, (dy, dx) in enumerate(offsets):
        out[i] = padded[i, :, PADDING + dy:PADDING + dy + h, PADDING + dx:PADDING + dx + w]
    return normalise(out)


# ----------------------------------------------------------------------------------------------------------
# Networks and checkpoints.

def build_network(official, arch, classes=10):
    if arch.startswith("wrn"):
        return fix_stem_and_pooling(getattr(official.repdistiller_wrn(), arch)(num_classes=classes), "wrn")
    return fix_stem_and_pooling(getattr(official.repdistiller_resnet(), arch)(num_classes=classes), "resnet")


def auxiliary_classifier(official, arch, classes=10):
    """L-MCL's Auxiliary_Classifier for a RepDistiller network (branches after stages 1 and 2)."""
    if arch.startswith("wrn"):
        _, depth, widen = arch.split("_")
        return official.lmcl_wrn().Auxiliary_Classifier(int(depth), classes, widen_factor=int(widen))
    depth = int(arch.replace("resnet", "").replace("x4", ""))
    filters = [32, 64, 128, 256] if arch.endswith("x4") else [16, 16, 32, 64]
    return official.lmcl_resnet().Auxiliary_Classifier(depth, filters, "basicblock", num_classes=classes)


def read_safetensors(path):
    """A state dict from a safetensors file: with the `safetensors` package, else parsed by hand (8-byte
    little-endian header length, JSON header, little-endian data)."""
    import torch
    try:
        from safetensors.torch import load_file
        return load_file(path)
    except ImportError:
        pass
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    types_ = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32}
    state = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        array = np.frombuffer(raw[8 + n + start: 8 + n + end], dtype=np.dtype(types_[entry["dtype"]]).newbyteorder("<"))
        state[name] = torch.from_numpy(array.reshape(entry["shape"]).copy())
    return state


def evaluate(nets, images, labels, batch):
    """Each network's and the ensemble's (sum of logits) test top-1, in evaluation mode."""
    import torch
    correct = [0] * len(nets)
    ensemble = 0
    for n in nets:
        n.eval()
    with torch.no_grad():
        for s in range(0, len(labels), batch):
            x = normalise(images[s:s + batch])
            y = torch.from_numpy(labels[s:s + batch])
            total = 0
            for i, n in enumerate(nets):
                logits = n(x)
                correct[i] += int((logits.argmax(1) == y).sum())
                total = total + logits
            ensemble += int((total.argmax(1) == y).sum())
    return [c / len(labels) for c in correct], ensemble / len(labels)


def mean_pairwise_cosine(e):
    """The mean of the off-diagonal entries of the Gram matrix of the rows of e, normalised to unit length."""
    import torch
    with torch.no_grad():
        u = torch.nn.functional.normalize(e.detach().double(), dim=1)
        b = u.shape[0]
        s = u.sum(0)
        return float(((s * s).sum() - (u * u).sum()) / (b * (b - 1)))


def sig(x, digits=5):
    if x is None or isinstance(x, (int, bool)) or not math.isfinite(x):
        return x if x is None or isinstance(x, (int, bool)) else str(x)
    return float(f"{x:.{digits}g}")


# ----------------------------------------------------------------------------------------------------------

def main(argv=None):
    a = parse(argv)
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    import warnings
    warnings.filterwarnings("ignore", message="size_average and reduce args will be deprecated")  # RepDistiller's DistillKL
    fix_cuda()
    official = Official(a)
    started = time.time()

    train_x, train_y = load_split(a.data_dir, "train", a.train_limit)
    test_x, test_y = load_split(a.data_dir, "test", a.test_limit)
    n_data = len(train_y)
    steps_per_epoch = len(m_per_class_batches(train_y, a.batch_size, a.seed, 0))
    total_steps = a.epochs * steps_per_epoch

    torch.manual_seed(a.seed)
    nets = [build_network(official, a.student) for _ in range(a.copies)]
    feature_dim = nets[0].fc.in_features
    trainable = nn.ModuleList(nets)

    # MCL: winycg/MCL's Sup_MCL_Loss (one Embed head per network, SupMCL over the cohort) and its DistillKL
    # for the logits. lmcl2: winycg/L-MCL's Auxiliary_Classifier per network, its Embed heads (branch 1,
    # branch 2, final), its pairwise SupMCL on the same layer of the two networks, and its DistillKL.
    # peer_vcl / peer_kl / pair_terms give the per-network log the same official pieces (no gradient).
    ns = lambda number_net: types.SimpleNamespace(number_net=number_net, feat_dim=128, kd_T=a.mcl_T, tau=a.tau,
                                                  rep_dim=[feature_dim] * number_net)
    mcl_criterion = aux = lmcl_heads = lmcl_pair = logit_kd = None
    if a.mcl and not a.layerwise:
        mcl = official.mcl_loss()
        mcl_criterion = mcl.Sup_MCL_Loss(ns(a.copies))
        trainable.append(mcl_criterion.embed_list)
        logit_kd = official.mcl_utils().DistillKL(a.mcl_T)
        single, pairwise = mcl.SupMCL(ns(1)), mcl.SupMCL(ns(2))
        peer_vcl = lambda e, y: float(single([e], y)[0])
        peer_kl = lambda s, t: float(single.kl(s, t))
        pair_terms = lambda e1, e2, y: pairwise([e1, e2], y)
    if a.layerwise:
        lmcl = official.lmcl_loss()
        aux = nn.ModuleList([auxiliary_classifier(official, a.student) for _ in nets])
        lmcl_heads = nn.ModuleList([nn.ModuleList([lmcl.Embed(feature_dim, 128) for _ in range(3)]) for _ in nets])
        lmcl_pair = lmcl.SupMCL(ns(2))
        trainable.append(aux)
        trainable.append(lmcl_heads)
        logit_kd = official.lmcl_utils().DistillKL(a.mcl_T)
        unit = lambda y: torch.ones(len(y), 1)      # L-MCL's per-sample weights, all 1 (no meta-learned weighting)
        peer_vcl = lambda e, y: float(lmcl_pair(e, e, y, unit(y))[0]) / 2
        peer_kl = lambda s, t: float(lmcl_pair.kl(s, t))
        pair_terms = lambda e1, e2, y: lmcl_pair(e1, e2, y, unit(y))

    # The teacher: a RepDistiller network with Cohort's weights; its losses from the official code.
    teacher = None
    teacher_top1 = None
    kd = crcd_f = crcd_g = rrd = mimic = get_grad_loss = None
    crcd_patch_error = None
    if a.teacher_losses:
        teacher = build_network(official, a.teacher_arch)
        state = read_safetensors(a.teacher_checkpoint)
        missing, unexpected = teacher.load_state_dict(state, strict=False)
        bad = [k for k in missing if not k.endswith("num_batches_tracked")] + list(unexpected)
        if bad:
            sys.exit(f"--teacher-checkpoint does not fit {a.teacher_arch}: {bad[:6]}")
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        teacher_top1 = evaluate([teacher], test_x, test_y, a.eval_batch)[0][0]
        t_dim = teacher.fc.in_features
        loops = official.crcd_loops()
        mimic = lambda step: loops.adjust_mimic_loss_weight(step, total_steps, adjust_loss_type="240")[1]
        get_grad_loss = loops.get_grad_loss
        if "kd" in a.teacher_losses:
            kd = official.repdistiller_kd().DistillKL(a.kd_T)
        if "crcd" in a.teacher_losses:
            criterion = official.crcd()
            if a.crcd_forward == "patched":
                with torch.random.fork_rng():     # leave the global stream as in --crcd-forward official
                    crcd_patch_error = check_crcd_patch(sys.modules["official_crcd.memory"])
                if crcd_patch_error > 1e-3:
                    sys.exit(f"the patched ContrastMemory.forward differs from the original by {crcd_patch_error:.3g}")
            opt = types.SimpleNamespace(embed_type="linear", s_dim=feature_dim, t_dim=t_dim, feat_dim=128, nce_k=a.crcd_negatives,
                                        nce_t=a.crcd_T, nce_m=a.crcd_momentum, n_data=n_data)
            with contextlib.redirect_stdout(io.StringIO()):        # CRCDLoss prints its embedding type
                crcd_f = nn.ModuleList([criterion.CRCDLoss(opt) for _ in nets])
                crcd_g = nn.ModuleList([criterion.CRCDLoss(opt) for _ in nets])
            trainable.append(crcd_f)
            trainable.append(crcd_g)
            other_class = {c: np.flatnonzero(train_y != c) for c in range(10)}
        if "rrd" in a.teacher_losses:
            opt = types.SimpleNamespace(memory_type="fifo", s_dim=feature_dim, t_dim=t_dim, feat_dim=128, nce_k=a.rrd_keys,
                                        nce_t_s=a.rrd_T_student, nce_t_t=a.rrd_T_teacher)
            rrd = nn.ModuleList([official.rrd().RRDLoss(opt) for _ in nets])
            trainable.append(rrd)

    # Cohort's SGD: every parameter (BN and biases too, heads and loss projections) in one group with
    # weight decay; Nesterov momentum; the rate set before every step from the per-step cosine.
    optimizer = torch.optim.SGD(trainable.parameters(), lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay, nesterov=True)

    def lr_at(step):
        return a.lr * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)) / 2

    def ramp_at(step):
        return 1.0 if a.soft_ramp_epochs <= 0 else min(1.0, step / (a.soft_ramp_epochs * steps_per_epoch))

    names = ["ce", "accuracy"]
    if a.mcl:
        names += ["vcl", "soft_vcl", "icl", "soft_icl", "embedding_cosine"]
        if a.logit:
            names.append("logit_kd")
    if a.layerwise:
        names += ["ce_aux1", "ce_aux2", "mcl_aux1", "mcl_aux2", "embedding_cosine_aux1", "embedding_cosine_aux2"]
    if kd:
        names.append("kd")
    if crcd_f:
        names += ["crcd", "crcd_gradient"]
    if rrd:
        names.append("rrd")
    names.append("feature_cosine")
    record = {"step": [], "lr": [], "soft_factor": [], "total": []}
    if a.mcl:
        record.update({"joint_vcl": [], "joint_soft_vcl": [], "joint_icl": [], "joint_soft_icl": []})
    if teacher is not None:
        record["distillation_weight"] = []
    per_net = [{k: [] for k in names} for _ in nets]
    test_curves = [[] for _ in nets]
    ensemble_curve = []

    step = 0
    for epoch in range(a.epochs):
        for position, indices in enumerate(m_per_class_batches(train_y, a.batch_size, a.seed, epoch)):
            x = assemble(train_x, indices, a.seed, epoch, position)
            y = torch.from_numpy(train_y[indices])
            index = torch.tensor(indices, dtype=torch.long)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            trainable.train()
            soft = a.soft_weight * ramp_at(step)
            logs = [dict() for _ in nets]
            features, logits, stage_feats = [], [], []
            for n in nets:
                feats, out = n(x, is_feat=True)
                features.append(feats[-1])
                logits.append(out)
                stage_feats.append(feats[1:3])
            loss = 0
            for i in range(len(nets)):
                ce = F.cross_entropy(logits[i], y)
                loss = loss + ce
                logs[i]["ce"] = ce.item()
                logs[i]["accuracy"] = float((logits[i].argmax(1) == y).float().mean())
                logs[i]["feature_cosine"] = mean_pairwise_cosine(features[i])
            if a.mcl:
                if not a.layerwise:
                    embeddings = [mcl_criterion.embed_list[i](features[i]) for i in range(len(nets))]
                    terms = mcl_criterion.contrast(list(embeddings), y)
                    loss = loss + a.vcl * terms[0] + a.soft_vcl * soft * terms[1] + a.icl * terms[2] + a.soft_icl * soft * terms[3]
                    layers = [(0, embeddings)]
                else:
                    branch = [aux[i](stage_feats[i]) for i in range(len(nets))]      # (features, logits) per network
                    for i in range(len(nets)):
                        for l in range(2):
                            value = F.cross_entropy(branch[i][1][l], y)
                            loss = loss + value
                            logs[i][f"ce_aux{l + 1}"] = value.item()
                    layers = []
                    for l in range(3):                    # branch 1, branch 2, the backbone's feature
                        e = [lmcl_heads[i][l](branch[i][0][l] if l < 2 else features[i]) for i in range(len(nets))]
                        terms = pair_terms(e[0], e[1], y)
                        loss = loss + a.layer_weights[l] * (a.vcl * terms[0] + a.soft_vcl * soft * terms[1]
                                                            + a.icl * terms[2] + a.soft_icl * soft * terms[3])
                        layers.append(((l + 1) % 3, e))   # 1, 2, then 0 = the final embedding
                for key, value in zip(("joint_vcl", "joint_soft_vcl", "joint_icl", "joint_soft_icl"), terms):
                    record[key].append(sig(float(value.detach())))   # the final embedding's, as the official code returns them
                with torch.no_grad():
                    # Cohort's per-peer terms (PeerTrainer: MCL.peerTerms): network i's own VCL, its soft VCL
                    # towards every other, and both directions of ICL and soft ICL with every other.
                    for layer, e in layers:
                        e = [t.detach() for t in e]
                        intra = [torch.mm(t, t.T) / a.tau for t in e]
                        for i in range(len(nets)):
                            others = [j for j in range(len(nets)) if j != i]
                            pairs = [pair_terms(e[i], e[j], y) for j in others]
                            v = (peer_vcl(e[i], y), sum(peer_kl(intra[i], intra[j]) for j in others),
                                 sum(float(p[2]) for p in pairs), sum(float(p[3]) for p in pairs))
                            if layer == 0:
                                logs[i].update(vcl=v[0], soft_vcl=v[1], icl=v[2], soft_icl=v[3],
                                               embedding_cosine=mean_pairwise_cosine(e[i]))
                            else:
                                logs[i][f"mcl_aux{layer}"] = a.vcl * v[0] + a.soft_vcl * soft * v[1] + a.icl * v[2] + a.soft_icl * soft * v[3]
                                logs[i][f"embedding_cosine_aux{layer}"] = mean_pairwise_cosine(e[i])
                if a.logit:
                    ensemble = (sum(logits) / len(logits)).detach()
                    for i in range(len(nets)):
                        if a.logit_kd_last_only and len(nets) > 2 and i != len(nets) - 1:
                            continue
                        value = logit_kd(logits[i], ensemble)
                        loss = loss + a.logit * value
                        logs[i]["logit_kd"] = value.item()
            if teacher is not None:
                lam = mimic(step)
                record["distillation_weight"].append(lam)
                with torch.no_grad():
                    t_feats, t_logits = teacher(x, is_feat=True)
                    f_t = t_feats[-1]
                for i in range(len(nets)):
                    if kd:
                        value = kd(logits[i], t_logits)
                        loss = loss + lam * a.kd_weight * value
                        logs[i]["kd"] = value.item()
                    if crcd_f:
                        g = rng(a.seed, PURPOSE_CONTRAST, epoch, position, i)

                        def contrast():
                            if a.crcd_sampling == "uniform":
                                negatives = g.integers(0, n_data, size=(len(indices), a.crcd_negatives))
                            else:
                                negatives = np.stack([g.choice(other_class[int(c)], a.crcd_negatives) for c in train_y[indices]])
                            return torch.from_numpy(np.concatenate([np.asarray(indices)[:, None], negatives], 1)).long()
                        value = crcd_f[i](features[i], f_t, index, contrast())
                        loss = loss + lam * value
                        logs[i]["crcd"] = value.item()
                        # the gradient elements, by the repository's get_grad_loss (autograd.grad of each
                        # side's cross-entropy with respect to its pooled feature, create_graph=True); the
                        # teacher's feature is a fresh leaf so that its side needs no graph of the teacher
                        ft_leaf = f_t.detach().requires_grad_(True)
                        ce_t = F.cross_entropy(teacher.fc(ft_leaf), y)
                        ce_s = F.cross_entropy(nets[i].fc(features[i]), y)
                        value = get_grad_loss(ft_leaf, features[i], ce_t, ce_s, crcd_g[i], index, contrast())
                        loss = loss + lam * value
                        logs[i]["crcd_gradient"] = value.item()
                    if rrd:
                        value = rrd[i](features[i], f_t)
                        loss = loss + lam * value
                        logs[i]["rrd"] = value.item()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            record["step"].append(step)
            record["lr"].append(sig(lr_at(step)))
            record["soft_factor"].append(sig(soft))
            record["total"].append(sig(loss.item()))
            for i in range(len(nets)):
                for k in names:
                    per_net[i][k].append(sig(logs[i].get(k)))
            step += 1
        if (epoch + 1) % a.eval_every != 0 and epoch + 1 != a.epochs:
            continue
        tops, ensemble_top1 = evaluate(nets, test_x, test_y, a.eval_batch)
        for i, t in enumerate(tops):
            test_curves[i].append(t)
        ensemble_curve.append(ensemble_top1)
        print(f"{a.method} seed {a.seed} epoch {epoch + 1}/{a.epochs}: "
              + ", ".join(f"net {i} {100 * t:.2f}%" for i, t in enumerate(tops))
              + (f"; ensemble {100 * ensemble_top1:.2f}%" if len(nets) > 1 else "")
              + f"  ({time.time() - started:.0f} s)", flush=True)

    result = {
        "method": a.method,
        "seed": a.seed,
        "implementation": "official PyTorch",
        "settings": {k: v for k, v in vars(a).items() if k not in ("out", "teacher_losses")},
        "torch": torch.__version__,
        "images": {"train": n_data, "test": len(test_y)},
        "steps_per_epoch": steps_per_epoch,
        "steps": total_steps,
        "teacher_top1": teacher_top1,
        "crcd_patch_max_relative_difference": None if crcd_patch_error is None else sig(crcd_patch_error, 3),
        "networks": [{"model": a.student, "test_top1": test_curves[i], "final_top1": test_curves[i][-1],
                      "steps": per_net[i]} for i in range(len(nets))],
        "mean_final_top1": sum(c[-1] for c in test_curves) / len(nets),
        "ensemble_top1": ensemble_curve[-1] if len(nets) > 1 else None,
        "ensemble_curve": ensemble_curve if len(nets) > 1 else None,
        "steps_record": record,
        "seconds": round(time.time() - started, 1),
    }
    directory = os.path.dirname(os.path.abspath(a.out))
    os.makedirs(directory, exist_ok=True)
    temporary = a.out + ".tmp"
    with open(temporary, "w") as f:
        json.dump(result, f, separators=(",", ":"))
    os.replace(temporary, a.out)          # whole or absent: side_by_side.py skips results that exist
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
