"""OpenAI's graders: decode them, check them, and grade samples with them.

The grading core that both the API (`POST /v1/fine_tuning/alpha/graders/run|validate`) and a reinforcement
trainer use. Pure Python over a few libraries (msgspec, rapidfuzz, nltk, rouge-score); it imports nothing else of
Tunewright. In short:

```python
grader = parse_grader(body["grader"])                   # GraderError (400) naming the path
runtime = Runtime(sample_model=sampler, python=SandboxLimits())
runtime.check(grader, item=item)                        # GraderError: what this runtime cannot run
result = grade(grader, Sample.from_text(text), item, runtime)
result.reward, result.errors, result.sub_rewards
```
"""

from tunewright.graders.errors import GraderError
from tunewright.graders.grading import (
    GradeErrors,
    GradeResult,
    ModelGraderError,
    ModelReply,
    ModelSampler,
    Runtime,
    TokenUsage,
    grade,
    model_graders,
)
from tunewright.graders.sandbox import SandboxLimits
from tunewright.graders.schemas import Grader, SamplingParams, encode_grader, grader_type, parse_grader
from tunewright.graders.templates import Sample

__all__ = [
    "GradeErrors",
    "GradeResult",
    "Grader",
    "GraderError",
    "ModelGraderError",
    "ModelReply",
    "ModelSampler",
    "Runtime",
    "Sample",
    "SamplingParams",
    "SandboxLimits",
    "TokenUsage",
    "encode_grader",
    "grade",
    "grader_type",
    "model_graders",
    "parse_grader",
]
