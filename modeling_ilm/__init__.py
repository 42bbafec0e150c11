"""ILM: the Item-Language Model as a Hugging Face-native package.

Importing registers the classes with the Auto classes, and marks them for `auto_map` so a saved
folder loads with `trust_remote_code=True` where this package is not installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForPreTraining, AutoProcessor

from .configuration_ilm import ILMConfig
from .constrained_decoding import TitleConstrainedLogitsProcessor, TitleTrie, title_constraint
from .modeling_ilm import ILMForConditionalGeneration, ILMForItemTextPretraining, ILMPreTrainedModel
from .pipeline_ilm import ILMPipeline
from .processing_ilm import ILMProcessor

AutoConfig.register("ilm", ILMConfig, exist_ok=True)
AutoModel.register(ILMConfig, ILMForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(ILMConfig, ILMForConditionalGeneration, exist_ok=True)
AutoModelForPreTraining.register(ILMConfig, ILMForItemTextPretraining, exist_ok=True)
AutoProcessor.register(ILMConfig, ILMProcessor, exist_ok=True)

ILMConfig.register_for_auto_class()
ILMForConditionalGeneration.register_for_auto_class("AutoModel")
ILMProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "ILMConfig",
    "ILMForConditionalGeneration",
    "ILMForItemTextPretraining",
    "ILMPipeline",
    "ILMPreTrainedModel",
    "ILMProcessor",
    "TitleConstrainedLogitsProcessor",
    "TitleTrie",
    "title_constraint",
]
