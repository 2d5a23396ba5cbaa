// featuremaps slide viewer: the slide and one feature map over it, with an opacity slider.
// Data come from the JSON block in the page (no fetch: the page opens from file://).
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("viewer-data").textContent);

  function source(image) {
    // An inline Deep Zoom descriptor: OpenSeadragon loads the tiles as <img>, which works from
    // file:// where XMLHttpRequest of the .dzi file would not.
    return {
      Image: {
        xmlns: "http://schemas.microsoft.com/deepzoom/2008",
        Url: image.url,
        Format: image.format,
        Overlap: "0",
        TileSize: String(image.tile),
        Size: { Width: String(image.width), Height: String(image.height) },
      },
    };
  }

  const slider = document.getElementById("opacity");
  const shown = document.getElementById("opacity-value");
  const select = document.getElementById("map");
  const caption = document.getElementById("caption");
  const opacity = () => Number(slider.value) / 100;

  const items = [
    { tileSource: source(data.slide), x: data.slide.x, y: data.slide.y, width: data.slide.world_width },
  ];
  data.overlays.forEach((o, i) => {
    items.push({
      tileSource: source(o),
      x: o.x,
      y: o.y,
      width: o.world_width,
      opacity: i === 0 ? opacity() : 0,
    });
  });

  const viewer = OpenSeadragon({
    id: "viewer",
    tileSources: items,
    showNavigationControl: false,
    showNavigator: false,
    imageSmoothingEnabled: false, // one map cell stays one visible block when zoomed in
    maxZoomPixelRatio: 64,
    visibilityRatio: 0.5,
    drawer: "canvas", // WebGL refuses file:// tiles (cross-origin textures)
  });
  window.featuremapsViewer = viewer;

  function current() {
    return Number(select.value);
  }
  function apply() {
    shown.textContent = slider.value + "%";
    const chosen = current();
    caption.textContent = data.overlays[chosen] ? data.overlays[chosen].caption : "";
    for (let i = 0; i < data.overlays.length; i++) {
      const item = viewer.world.getItemAt(i + 1);
      if (item) item.setOpacity(i === chosen ? opacity() : 0);
    }
    document.body.dataset.opacity = String(opacity());
    document.body.dataset.map = String(chosen);
  }
  slider.addEventListener("input", apply);
  select.addEventListener("change", apply);
  viewer.addHandler("open", apply);
  viewer.world.addHandler("add-item", () => {
    if (viewer.world.getItemCount() === items.length) apply();
  });
  let loaded = 0;
  viewer.addHandler("tile-loaded", () => {
    loaded += 1;
    document.body.dataset.tilesLoaded = String(loaded);
  });
  caption.textContent = data.overlays.length ? data.overlays[0].caption : "";
})();
