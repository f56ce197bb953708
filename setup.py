from setuptools import find_packages, setup

setup(
    name="combinax",
    version="0.1.0",
    description="Trax-style combinator layers on JAX: pure (init, apply) layers composed on a data stack.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["combinax", "combinax.*"]),
    package_data={"combinax.data": ["corpora/*.jsonl.gz", "corpora/DATA.md"],
                  "combinax.quant.kernels": ["qdot.cc"]},   # compiled on first use (combinax.quant.kernels)
    install_requires=[
        "jax>=0.7.1",  # jax.set_mesh: the mesh a Pipeline places its stages on
        "numpy>=1.26",
        "optax>=0.2.4",
        "gin-config>=0.5.0",
        "absl-py>=1.4",
        "sentencepiece>=0.2.0",
        "tokenizers>=0.20",
        "tqdm>=4.60",
        "tensorboardX>=2.6",
        "orbax-checkpoint>=0.11.0",  # checkpoints: each process writes its own shards, asynchronously
    ],
    entry_points={"console_scripts": ["combinax-train = combinax.cli.train:main",
                                      "combinax-decode = combinax.cli.decode:main",
                                      "combinax-federated = combinax.cli.federated:main"]},
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5"],
        "tfds": ["tensorflow-datasets>=4.9.4", "importlib_resources", "array_record>=0.5"],
        # Readers of pretrained weights (safetensors, GGUF, Keras HDF5); the weights themselves come with
        # `python -m combinax.pretrained download NAME`.
        "pretrained": ["safetensors>=0.4", "gguf>=0.10", "h5py>=3.8"],
        # Approximate nearest-neighbour indexes for knowledge bases (combinax.retrieval: FaissSearch, USearchSearch);
        # exact search needs nothing more.
        "retrieval": ["faiss-cpu>=1.8", "usearch>=2.12"],
        # Images the project draws itself (combinax.data.rendered): Pillow, and the TrueType fonts matplotlib's wheel
        # ships (DejaVu, STIX); nothing is downloaded at run time.
        # PP-OCR's recogniser (pretrained "ppocr-v4-rec") is read from its ONNX file with onnx, and checked against
        # onnxruntime, the runtime its package uses.
        "vision": ["pillow>=10.1", "matplotlib>=3.8", "onnx>=1.16", "onnxruntime>=1.18"],
        # Words the project says itself (combinax.data.spoken): eSpeak NG's library and voices, inside a wheel.
        "audio": ["espeakng-loader==0.2.4"],
        # The Flower adapter (combinax.federated.flower): a federated recipe run as separate processes.
        "federated": ["flwr>=1.13"],
        # The peers of benchmarks/compare.py (run by hand, never by CI). Trax 1.4.1 pins old JAX and TensorFlow, so
        # it gets an environment of its own: bash benchmarks/setup_trax.sh.
        # benchmarks/inference.py's peers too: transformers and llama.cpp (llama-cpp-python builds it from source,
        # ~20 min on 2 cores).
        "bench": ["torch==2.13.0", "flax>=0.12", "matplotlib", "transformers>=4.46", "gguf>=0.10",
                  "llama-cpp-python==0.3.36"],
    },
)
