// What the Sparkplug test peers (sparkplug_host.js, sparkplug_edge.js) share: a decoded value as
// plain JSON, and one JSON object per stdout line.
"use strict";

// Long (64-bit) as a number, or as a decimal string beyond 2^53; bytes as hex; NaN and the
// infinities as strings (JSON has none).
function plain(value) {
    if (value !== null && typeof value === "object" && value.__isLong__ === true) {
        const text = value.toString();  // signed or unsigned, as the Long says
        const number = Number(text);
        return Number.isSafeInteger(number) ? number : text;
    }
    if (Buffer.isBuffer(value) || value instanceof Uint8Array) {
        return Buffer.from(value).toString("hex");
    }
    if (Array.isArray(value)) {
        return value.map(plain);
    }
    if (value !== null && typeof value === "object") {
        const out = {};
        for (const [k, v] of Object.entries(value)) {
            out[k] = plain(v);
        }
        return out;
    }
    if (typeof value === "number" && !Number.isFinite(value)) {
        return String(value);
    }
    return value;
}

function emit(obj) {
    process.stdout.write(JSON.stringify(obj) + "\n");
}

module.exports = {plain, emit};
