// A Gemini Live app on Google's JS SDK (@google/genai), unchanged but for the base URL and the key.
// Usage: node gemini_live_client.cjs BASE_URL API_KEY QUESTION MAX_TOKENS
// Prints one JSON line: the answer's text, its usage, and the server messages' top-level keys.
const { GoogleGenAI, Modality } = require("@google/genai");

const [baseUrl, apiKey, question, maxTokens] = process.argv.slice(2);

async function main() {
  const ai = new GoogleGenAI({ apiKey, httpOptions: { baseUrl } });
  const keys = [];
  let text = "";
  let done;
  const finished = new Promise((resolve, reject) => {
    done = { resolve, reject };
  });
  const session = await ai.live.connect({
    model: "gemini-live-2.5-flash-preview",
    config: { responseModalities: [Modality.TEXT], temperature: 0, maxOutputTokens: Number(maxTokens) },
    callbacks: {
      onmessage: (message) => {
        keys.push(...Object.keys(message).filter((key) => message[key] !== undefined));
        const content = message.serverContent;
        if (content && content.modelTurn) {
          text += content.modelTurn.parts.map((part) => part.text || "").join("");
        }
        if (content && content.turnComplete) {
          done.resolve(message.usageMetadata);
        }
      },
      onerror: (event) => done.reject(new Error(`error: ${event.message}`)),
      onclose: (event) => done.reject(new Error(`closed ${event.code}: ${event.reason}`)),
    },
  });
  session.sendClientContent({ turns: [{ role: "user", parts: [{ text: question }] }], turnComplete: true });
  const usage = await finished;
  session.close();
  console.log(JSON.stringify({ text, usage, keys: [...new Set(keys)].sort() }));
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(String(error));
    process.exit(1);
  },
);
