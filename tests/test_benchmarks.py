"""Every benchmark still runs: each script's ``--smoke`` mode, as a subprocess.

A smoke run takes tiny sizes and seconds but goes through the same code as the measurement
(the real stages on Spark, the real index, the real embedding), so a benchmark that broke
when the library changed fails here rather than on the day someone needs its figures. Each
run must exit 0 and print its figures: the patterns below are the figures' labels followed by
a number, so a script that printed nothing, or stopped half-way, fails.

The list is every ``benchmarks/*.py``: a new benchmark without a ``--smoke`` mode, or without
its figures' patterns in FIGURES, fails the suite. Scripts that need the shared photo sets
(``../shared/datasets``), the pretrained weights or an S3 store skip, saying which, where
those are absent.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted((REPO / "benchmarks").glob("*.py"))
DATASETS = REPO.parent / "shared" / "datasets"
CLOTHING = DATASETS / "clothing-small"
GROCERY = DATASETS / "grocery-store"
NUMBER = r"[-+]?\d[\d,]*(?:\.\d+)?"

# script -> patterns its smoke output must contain ("#" stands for a number).
FIGURES: dict[str, tuple[str, ...]] = {
    "category_mismatch.py": (
        "embedded # photos in # s",
        r"default \(own 0%, other >= 50%\) +#/3 +# +# of #",
        r"majority vote, other >= 70% +#/3",
    ),
    "clothing_precision.py": (
        r"fine-tuning: # s in all = trunk features # s \+ training # s",
        "precision@10 +#% +#% +[-+]#",
        "Annoy recall@10 +#% +#%",
        "recorded in ",
    ),
    "duplicates_quality.py": ("pairwise precision # +recall # +F1 #", "time # s"),
    "duplicates_scale.py": (
        r"# synthetic SKUs \(1280-d",
        r"index stage .*: # s \(# exact, # IVF, # Annoy shards\); peak memory # GiB",
        "duplicates stage: # s on 2 cores; peak memory # GiB",
        # Every planted pair is found (the smoke run's 30 exact and 60 near copies).
        r"planted exact pairs found: 30 / 30$",
        r"planted near pairs found: 60 / 60$",
    ),
    "embed_device.py": (r"device: cpu", r"16 images \(# rejected\) in # s: # images/s"),
    "embed_throughput.py": (
        r"\(a\) plain PyTorch loop, .*: # images/s",
        r"\(b\) Spark embed stage, local\[2\]: # images/s",
        r"ratio \(b\)/\(a\): #",
        r"\(c\) iterator pandas UDF: # images/s",
        r"\(c\) predict_batch_udf: # images/s",
        r"\(d\) incremental run, # of # images changed: # s .* #% of the full run",
        r"\(e\) peak resident memory of a Python worker while embedding: # MB",
    ),
    "exact_vs_annoy.py": (
        r"^ +128 +300 +# +# +# +# +# +# +# +# +#$",
        r"^ +1280 +600 +# +# +# +# +# +# +# +# +#$",
        r"^ +B +2 +# +# +# +# +#   tuned: #/# lists, recall #, scans # of the vectors "
        r"\(auto keeps IVF up to 0.1: (yes|no)\)$",
        r"chosen on half A: share # \(worst seed #, target #\); on half B, .*worst seed #",
    ),
    "grocery_finetune.py": ("trunk features: # images, # s", "model_id: ", "recorded in "),
    "http_images.py": (
        r"^20 real photos \(# MB\)",
        r"\(a\) disk: 20 images in # s: # images/s",
        r"\(b\) http: 20 images in # s: # images/s \(20 downloads, # MB\); http/disk speed x#",
        r"\(c\) unchanged http night: .* 20 answered 304 of 20 requests, 0 downloads, 0 bytes",
    ),
    "object_storage.py": (
        r"local disk \(hard links \+ commit\) +# s",
        r"S3 \(server-side copies \+ commit\) +# s +x#",
        r"open from S3, cached +# s",
    ),
    "pca_decision.py": (
        r"^corpus: # real photos .* \+ # planted copies",
        r"^none +- +# +# +# +# +# +#$",
        r"^pca 128 +# +# +# +# +# +# +#$",
        r"^setting +seed +in top-K +kept@# +false/SKU +recalibrated +kept@recal +false/SKU$",
        r"^pca 256 +# +# +# +# +# +# +#$",
        r"^none +1280 +ivf +# +# +#$",
        r"^pca 128 +128 +ivf +# +# +#$",
        r"^verdict PCA 256: .* -> (default|stays off)$",
        r"^verdict PCA 128: .* -> (default|stays off)$",
    ),
    "pca_real.py": (
        r"^none +1280 +# +# +# +# +# +#$",
        r"^pca 128 \+ whitening +128 +# +#",
        r"^20 +# +#ms +# +#ms$",
    ),
    "real_vectors.py": (r"# photos embedded \(1280-d", "read back: # vectors of 1280"),
    "serve_latency.py": (
        r"published 3,000 SKUs x 10 = 30,000 similar items",
        r"workers=1 memory: RSS # MB \(own # MB \+ mapped files # MB\)",
        r"^ +8 +# +# +# +# +# +0$",
        r"Delta filtered scan +p50 # ms .*: x# the service's p50",
        r"served by a worker # s and by every worker # s after its commit",
        r"errors during the swap: 0$",
        r"target p99 <= 5 ms at >= 2000 req/s: (met|not met)",
    ),
    "unchanged_night.py": (
        r"^300 images \(# MB\) made",
        r"\(a\) hash every image: embed stage # s, hashed 300 images \(# MB read\), reused 300",
        r"\(b\) by listing : embed stage # s, hashed 0 images \(0.0 MB read\), reused 300 "
        r"\(300 by listing",
        r"listing against hashing: time x#, bytes read 0 against #",
    ),
    "shared_photos.py": (
        r"catalog: # listings \(seed #\)",
        r"placeholder listings set apart: +# of #",
        r"real duplicate listings in a cluster: +# of #",
    ),
    "style_groups.py": (
        r"^ +10 +4 +#( +#){6}$",
        r"chosen: k=#, min_shared=#, min_similarity=# \(worst-seed ARI #\)",
        r"^grocery B, seed 0 +ours \(k=# .* ARI # +purity # +coverage # +groups +# +# s$",
        r"^grocery B, seed 0 +k-means, true style count, seed 0 +ARI #",
        r"^clothing +ours .* ARI # +purity # +coverage #",
        r"^clothing +HDBSCAN",
        r"^3,000 synthetic SKUs \(1280-d, .*: index # s, neighbors # s; styles stage # s, "
        r"peak memory # GiB; # groups, # listings in them, largest #$",
    ),
    "topk_scale.py": (
        r"dim= 128 N= +3,000 +auto: index +# s .* recall@10 #",
        r"dim=1280 N= +3,000 +auto: index +# s \(# shards: # exact, # IVF, # Annoy\) .*"
        r"peak memory # GiB; recall@10 #",
        r"dim=1280 N= +3,000 annoy: index +# s .* recall@10 #",
        r"dim=1280 N= +3,000 exact: index +# s \(# shards: # exact, 0 IVF, 0 Annoy\)",
        r"dim=1280 N=3,000: exact took x# the time of auto",
        r"N=3,000 auto: dim 128 -> 1280: time x#",
        r"brute force dim=128 N=1,000: (# s; ours # s: #x faster|did not finish)",
    ),
}


def _weights() -> Path:
    from lookalike.core.backbones import MOBILENET_V2_FILE, torch_hub_checkpoints

    return torch_hub_checkpoints() / MOBILENET_V2_FILE


def _imagededup() -> bool:
    try:
        import imagededup  # noqa: F401
    except ImportError:
        return False
    return True


# script -> the shared photo sets it reads.
DATASETS_OF = {
    "category_mismatch.py": (CLOTHING,),
    "clothing_precision.py": (CLOTHING,),
    "duplicates_quality.py": (CLOTHING,),
    "embed_device.py": (CLOTHING,),
    "embed_throughput.py": (CLOTHING,),
    "grocery_finetune.py": (GROCERY,),
    "pca_decision.py": (CLOTHING, GROCERY),
    "real_vectors.py": (CLOTHING, GROCERY),
    "shared_photos.py": (CLOTHING,),
}
# Scripts that measure an S3 store (the object-storage tests' store, LOOKALIKE_TEST_S3).
NEEDS_S3 = {"object_storage.py"}
# Scripts driving a load generator (.ci/run installs it): script -> the program.
NEEDS_PROGRAM = {"serve_latency.py": "wrk"}
# Scripts embedding with the ImageNet weights (`make venv` installs them).
PRETRAINED = {
    "category_mismatch.py",
    "clothing_precision.py",
    "duplicates_quality.py",
    "embed_throughput.py",
    "grocery_finetune.py",
    "pca_decision.py",
    "real_vectors.py",
    "shared_photos.py",
}


def test_every_benchmark_is_listed() -> None:
    names = {path.name for path in BENCHMARKS}
    assert names, "no benchmarks found"
    missing = sorted(names - set(FIGURES))
    assert not missing, f"add the figures of {missing} (their --smoke output) to FIGURES"
    assert not set(FIGURES) - names, "FIGURES names a benchmark that is gone"


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.stem)
def test_smoke_run_prints_its_figures(script: Path) -> None:
    assert script.name in FIGURES, f"add the figures of {script.name} to FIGURES"
    for dataset in DATASETS_OF.get(script.name, ()):
        if not dataset.is_dir():
            pytest.skip(f"{script.name} needs the shared photo set {dataset}: not here")
    if script.name in NEEDS_S3 and not os.environ.get("LOOKALIKE_TEST_S3"):
        pytest.skip(
            f"{script.name} needs an S3 store: LOOKALIKE_TEST_S3=s3://bucket with AWS_* "
            '(eval "$(.ci/ceph-s3.sh)" starts one)'
        )
    program = NEEDS_PROGRAM.get(script.name)
    if program and shutil.which(program) is None:
        pytest.skip(f"{script.name} needs {program} on PATH (apt-get install {program})")
    if script.name in PRETRAINED and not _weights().exists():
        pytest.skip(f"{script.name} needs the pretrained weights at {_weights()}: `make venv`")
    command = [sys.executable, str(script), "--smoke"]
    if script.name == "duplicates_quality.py" and not _imagededup():
        command.append("--skip-peer")  # the peer is the `bench` extra; our part still runs
    env = {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "TORCH_HOME": os.environ.get("TORCH_HOME", str(REPO / ".cache" / "torch")),
    }
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    output = done.stdout + done.stderr
    assert done.returncode == 0, (
        f"{script.name} --smoke exited {done.returncode}:\n{output[-4000:]}"
    )
    for pattern in FIGURES[script.name]:
        regex = re.compile(pattern.replace("#", NUMBER), re.MULTILINE)
        assert regex.search(done.stdout), (
            f"{script.name} --smoke printed no {pattern!r}:\n{done.stdout[-4000:]}"
        )
