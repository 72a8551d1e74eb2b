// Render every vega-lite chart of a `dvc plots show` page headless, with the vega and vega-lite
// that plots/offline.html inlines, and print what a reader would see: per chart its title, the
// y-axis tick labels, its legend's labels and all its text, or the error that stopped it.
// usage: node tests/render_plots.js PAGE.html TEMPLATE.html  ->  JSON on stdout
"use strict";
const fs = require("fs");
const vm = require("vm");

const [page, template] = process.argv.slice(2).map((path) => fs.readFileSync(path, "utf8"));
const scripts = template.split('<script type="text/javascript">').slice(1, 3).map((part) => part.split("</script>")[0]);
scripts.forEach((code) => vm.runInThisContext(code)); // UMD bundles: no `module` here, so they set globalThis.vega(Lite)

const charts = [...page.matchAll(/var spec = (\{.*\});\s*vegaEmbed\('#([^']+)'/g)];

function texts(svg) {
  return [...svg.matchAll(/<text[^>]*>([^<]*)<\/text>/g)].map((match) => match[1]);
}

function part(svg, start, end) { // the SVG from the group that `start` names to the next `end` or the end ("" if none)
  const from = svg.indexOf(start);
  const to = svg.indexOf(end, from);
  return from < 0 ? "" : svg.slice(from, to < 0 ? svg.length : to);
}

(async () => {
  const out = {};
  for (const [, json, id] of charts) {
    try {
      const spec = JSON.parse(json);
      const view = new vega.View(vega.parse(vegaLite.compile(spec).spec), { renderer: "none" });
      const svg = await view.toSVG();
      out[id] = {
        title: spec.title && spec.title.text,
        y_labels: texts(part(svg, 'aria-label="Y-axis', "role-axis-title")),
        legend: texts(part(svg, 'class="mark-group role-legend"', 'class="mark-group role-title"')),
        texts: texts(svg),
      };
    } catch (error) {
      out[id] = { error: String(error) };
    }
  }
  process.stdout.write(JSON.stringify(out));
})();
