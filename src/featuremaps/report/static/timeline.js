// featuremaps timeline: each layer's slider shows its picture at the chosen step.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const data = JSON.parse(document.getElementById("timeline-data").textContent);
  for (const section of document.querySelectorAll("section.timeline-layer")) {
    const layer = data[Number(section.dataset.index)];
    const slider = section.querySelector("[data-role=slider]");
    const picture = section.querySelector("[data-role=picture]");
    const step = section.querySelector("[data-role=step]");
    slider.addEventListener("input", () => {
      const at = Number(slider.value);
      step.textContent = String(layer.steps[at]);
      const image = layer.images[at];
      if (image) {
        picture.src = image;
        picture.alt = `step ${layer.steps[at]}`;
      } else {
        picture.removeAttribute("src");
        picture.alt = "not drawn at this step";
      }
    });
  }
});
