// One text turn with the openai JS SDK's OpenAIRealtimeWS (on the `ws` package) against mlxd's /v1/realtime.
// Run by tests/test_realtime_node.py with NODE_PATH at the cached SDK and NODE_EXTRA_CA_CERTS trusting the
// server's self-signed certificate; prints one JSON line with what it saw, exits 1 on any error.
const OpenAI = require('openai').default;
const { OpenAIRealtimeWS } = require('openai/realtime/ws');

const client = new OpenAI({ apiKey: process.env.MLXD_TOKEN, baseURL: process.env.MLXD_BASE_URL });
const rt = new OpenAIRealtimeWS({ model: 'served-model' }, client);
const seen = [];
let text = '';
const fail = (error) => {
  console.error(error);
  process.exit(1);
};
setTimeout(() => fail(new Error('no response.done within 60 s')), 60000).unref();
rt.on('error', fail);
rt.on('event', (event) => seen.push(event.type));
rt.on('response.output_text.delta', (event) => { text += event.delta; });
rt.on('response.done', (event) => {
  const item = event.response.output[0];
  console.log(JSON.stringify({ seen, text, status: event.response.status, done: item.content[0].text,
                               usage: event.response.usage }));
  rt.close();
});
rt.socket.on('open', () => {
  rt.send({ type: 'session.update',
            session: { type: 'realtime', output_modalities: ['text'], max_output_tokens: 5, temperature: 0 } });
  rt.send({ type: 'conversation.item.create',
            item: { type: 'message', role: 'user', content: [{ type: 'input_text', text: 'Hello from node' }] } });
  rt.send({ type: 'response.create' });
});
