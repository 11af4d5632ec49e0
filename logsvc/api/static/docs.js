const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
const resolve = (spec, node) => node && node.$ref ? spec.components.schemas[node.$ref.split("/").pop()] : node;
function schemaText(spec, schema) {
  schema = resolve(spec, schema) || {};
  if (schema.type === "array") return schemaText(spec, schema.items) + "[]";
  if (schema.oneOf) return schema.oneOf.map((s) => schemaText(spec, s)).join(" | ");
  if (schema.properties) return "{" + Object.entries(schema.properties).map(([k, v]) => k + ": " + (resolve(spec, v).type || "any")).join(", ") + "}";
  return schema.type || "any";
}
fetch("openapi.json").then((r) => r.json()).then((spec) => {
  const out = [];
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [verb, op] of Object.entries(ops)) {
      if (verb === "parameters") continue;
      const params = (op.parameters || []).map((p) =>
        `<tr><td><code>${esc(p.name)}</code></td><td>${esc(p.in)}</td><td>${esc(schemaText(spec, p.schema))}</td><td>${esc(p.description || "")}</td></tr>`).join("");
      const body = op.requestBody ? Object.entries(op.requestBody.content).map(([type, c]) =>
        `<p>Body (<code>${esc(type)}</code>): <code>${esc(schemaText(spec, c.schema))}</code></p>`).join("") : "";
      const answers = Object.entries(op.responses).map(([code, r]) =>
        `<tr><td>${esc(code)}</td><td>${esc(r.description || "")}</td><td><code>${esc(Object.entries(r.content || {}).map(([t, c]) => t + ": " + schemaText(spec, c.schema)).join("; "))}</code></td></tr>`).join("");
      out.push(`<details><summary><span class="verb ${verb}">${verb.toUpperCase()}</span>${esc(path)} — ${esc(op.summary || "")}</summary><div class="body">
        ${params ? `<table><tr><th>parameter</th><th>in</th><th>type</th><th></th></tr>${params}</table>` : ""}
        ${body}<table><tr><th>status</th><th>meaning</th><th>content</th></tr>${answers}</table></div></details>`);
    }
  }
  document.getElementById("paths").innerHTML = out.join("");
});
