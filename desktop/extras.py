"""The form's AUTOMATIC1111 extras: a style from the engine's styles.csv, the hires fix, clip skip and tiling, as
`!dream` flags (--style, --hr, --clip_skip, --tiling), so the form and the prompt box speak one grammar."""

from __future__ import annotations

from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QSpinBox

from desktop.engine_link import EngineLink
from engine.client.schema import DreamRequest, HiresFix


class ExtrasBox(QGroupBox):
    def __init__(self, link: EngineLink) -> None:
        super().__init__("More")
        self.link = link
        self.style = QComboBox()
        self.style.addItem("")  # no style
        self.style.setToolTip("a style of the engine's styles.csv (--style)")
        fields = DreamRequest.model_fields
        self.hires = QDoubleSpinBox(minimum=0.0, maximum=4.0, singleStep=0.5, value=0.0)
        self.hires.setSpecialValueText("off")
        self.hires.setToolTip("the hires fix: draw, upscale by this factor, repaint at the larger size (--hr)")
        self.hires_strength = QDoubleSpinBox(minimum=0.05, maximum=1.0, singleStep=0.05,
                                             value=HiresFix.model_fields["strength"].default)  # fmt: skip
        self.clip_skip = QSpinBox(minimum=1, maximum=12, value=fields["clip_skip"].default)
        self.tiling = QCheckBox("seamless (tiles)")
        form = QFormLayout(self)
        form.addRow("Style", self.style)
        form.addRow("Hires fix ×", self.hires)
        form.addRow("Hires strength", self.hires_strength)
        form.addRow("Clip skip", self.clip_skip)
        form.addRow("", self.tiling)
        link.ready.connect(lambda _: self.refresh_styles())

    def refresh_styles(self) -> None:
        def fill(styles: list) -> None:
            current = self.style.currentText()
            self.style.clear()
            self.style.addItem("")
            for s in styles:
                self.style.addItem(s.name)
            self.style.setCurrentText(current)

        self.link.call(lambda c: c.styles(), fill, lambda _: None)  # no styles.csv: nothing to pick

    def argv(self) -> list[str]:
        argv: list[str] = []
        if self.style.currentText():
            argv.append(f"--style={self.style.currentText()}")
        if self.hires.value() >= 1:
            argv += ["--hr", f"{self.hires.value():g}", "--hr_strength", f"{self.hires_strength.value():g}"]
        if self.clip_skip.value() != 1:
            argv += ["--clip_skip", str(self.clip_skip.value())]
        if self.tiling.isChecked():
            argv.append("--tiling")
        return argv

    def reuse(self, params: dict) -> None:
        """An image's extras back in the box (its styles are already in its prompt: the box keeps none)."""
        hires = params.get("hires") or {}
        self.style.setCurrentText("")
        self.hires.setValue(hires.get("scale", 0.0))
        self.hires_strength.setValue(hires.get("strength", HiresFix.model_fields["strength"].default))
        self.clip_skip.setValue(params.get("clip_skip") or 1)
        self.tiling.setChecked(bool(params.get("tiling")))
