"""Text-to-image data in the formats the community shares it in.

- :class:`PromptList`: prompts, one a line or JSONL (online methods, mining);
- :class:`PickAPicPairs`: human preference pairs in the Pick-a-Pic v2 parquet
  layout (Diffusion-DPO, KTO);
- :class:`ImageCaptions`: image-caption folders in Hugging Face's
  ``imagefolder`` + ``metadata.jsonl`` layout (SFT).

The built-in plugin :mod:`prefdiff.builtin.text` registers them as the
datasets ``prompts``, ``pickapic`` and ``image_captions``; ``prefdiff fit``
also reads a Pick-a-Pic folder given as ``--data.pairs``. Nothing is ever
downloaded: every reader takes local files.
"""

from prefdiff.textdata.captions import ImageCaptions
from prefdiff.textdata.pickapic import PICKAPIC_COLUMNS, PickAPicPairs, parquet_shards
from prefdiff.textdata.prompts import PromptList, read_prompt_file
from prefdiff.textdata.splits import SPLITS, hash_split

__all__ = ["PICKAPIC_COLUMNS", "SPLITS", "ImageCaptions", "PickAPicPairs", "PromptList", "hash_split",
           "parquet_shards", "read_prompt_file"]
