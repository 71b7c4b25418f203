"""Describe a picture for any API (native /v1/describe, A1111's interrogate): the vocabularies ranked by CLIP, and
the prompt of the nearest gallery image the asker may see."""

from __future__ import annotations

from PIL import Image

from engine.client.answers import DescribedTerm, Description
from engine.client.schema import Scope
from engine.server.records import search_results
from engine.server.services import Services
from gallery.schemas import SearchFilters


def describe_picture(s: Services, image: Image.Image, scope: Scope, exclude: int | None = None) -> Description:
    """The composed prompts, the nearest gallery prompt among them (third, after the two best composed ones)."""
    described = s.describer.describe(image)
    filters = SearchFilters(guild=scope.guild, dm_of=scope.dm_of)
    page = s.search.by_image(image=image, limit=3, filters=filters, exclude=exclude)
    prompts = list(described.prompts)
    for hit in page.results:
        if hit.image.prompt and hit.image.prompt not in prompts:
            prompts.insert(min(2, len(prompts)), hit.image.prompt)
            break
    return Description(
        prompts=prompts[:4],
        terms={k: [DescribedTerm(term=t, score=v) for t, v in terms] for k, terms in described.terms.items()},
        similar=search_results(page, s.store).results,
    )
