"""patch_once: a wrap applies once however often it is asked for, several wraps of one function stack,
a static method stays static, a property keeps its setter with its getter wrapped; the owner may be a
module (a namespace here) or a class."""
import types

from mega_fairseq.patching import patch_once


def adding(suffix):
    def wrap(function):
        def wrapper(*args):
            return function(*args) + suffix
        return wrapper
    wrap.__name__ = f"add_{suffix}"
    return wrap


def test_a_wrap_applies_once_and_several_wraps_stack():
    module = types.SimpleNamespace(text=lambda: "x")
    first, second = adding("a"), adding("b")
    for _ in range(3):
        patch_once(module, "text", first)
    assert module.text() == "xa"
    patch_once(module, "text", second)
    patch_once(module, "text", first)
    assert module.text() == "xab"
    assert module.text.mega_patches == ("add_a", "add_b")


def test_a_static_method_stays_static():
    class Owner:
        @staticmethod
        def text(value):
            return value

    patch_once(Owner, "text", adding("!"))
    patch_once(Owner, "text", adding("!"))
    assert Owner.text("x") == "x!" and Owner().text("y") == "y!"


def test_a_property_keeps_its_setter_and_its_getter_is_wrapped_once():
    class Owner:
        def __init__(self):
            self._text = "x"

        @property
        def text(self):
            return self._text

        @text.setter
        def text(self, value):
            self._text = value

    for _ in range(2):
        patch_once(Owner, "text", adding("!"))
    owner = Owner()
    assert isinstance(Owner.__dict__["text"], property) and owner.text == "x!"
    owner.text = "y"
    assert owner.text == "y!" and Owner.text.fget.mega_patches == ("add_!",)
