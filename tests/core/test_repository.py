"""The repository builds its rows' shapes without pydantic's model_construct (for speed):
held here to build exactly what model_construct builds, for every shape it loads."""

import pytest
from sqlmodel import SQLModel

from app.core.repository import Repository, builder, fill


def shapes() -> list[type[SQLModel]]:
    found, todo = set(), list(Repository.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if "row" in vars(cls):
            found.add(cls.row)
    return sorted(found, key=lambda shape: shape.__name__)


def test_every_shape_is_found() -> None:
    # The core's own; a feature's (the messenger's) are found the same way while it exists.
    assert {"UserRow", "TokenRow", "MailRow"} <= {shape.__name__ for shape in shapes()}


@pytest.mark.parametrize("shape", shapes(), ids=lambda shape: shape.__name__)
def test_rows_are_built_as_model_construct_builds_them(shape: type[SQLModel]) -> None:
    fields = list(shape.model_fields)
    # Every field given; then only the required ones (the rest take their defaults); each
    # with a column the shape does not have, which both leave out.
    required = [name for name in fields if shape.model_fields[name].is_required()]
    for names in (fields, required):
        keys = (*reversed(names), "not_a_field")
        row = [object() for _ in keys]  # values are not validated: any object passes
        made = builder(shape, keys)(row)
        expected = shape.model_construct(None, **dict(zip(keys, row, strict=True)))
        assert list(made.__dict__.items()) == list(expected.__dict__.items())
        assert made.model_fields_set == expected.model_fields_set
        assert made.__pydantic_extra__ == expected.__pydantic_extra__
        assert made.__pydantic_private__ == expected.__pydantic_private__
        again = builder(shape, keys)(row)
        for name, value in made.__dict__.items():  # a default list is no row's but its own
            if isinstance(value, list | dict):
                assert again.__dict__[name] is not value


def required(shape: type[SQLModel]) -> tuple[str, ...]:
    return tuple(name for name in shape.model_fields if shape.model_fields[name].is_required())


# Shapes with an id (fill finds items by it) and a field left to its default (fill must
# mark it set): the messenger's messages, which fill their reactions, mentions, attachments.
FILLED = [s for s in shapes() if "id" in required(s) and len(required(s)) < len(s.model_fields)]


@pytest.mark.parametrize("shape", FILLED, ids=lambda shape: shape.__name__)
def test_fill_sets_a_field_as_assignment_sets_it(shape: type[SQLModel]) -> None:
    keys = required(shape)
    name = [name for name in shape.model_fields if name not in keys][-1]
    items = [builder(shape, keys)([i if k == "id" else object() for k in keys]) for i in (1, 2)]
    expected = [builder(shape, keys)([i if k == "id" else object() for k in keys]) for i in (1, 2)]
    found = {1: object(), 2: object()}
    for item in expected:
        setattr(item, name, found[item.id])
    assert fill(items, name, found) == items
    for made, assigned in zip(items, expected, strict=True):
        assert made.__dict__[name] is found[made.id]
        assert made.model_fields_set == assigned.model_fields_set
        assert list(made.__dict__) == list(assigned.__dict__)
