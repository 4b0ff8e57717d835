// JSON schema of POST /detokenize.
import { Type, type Static } from 'typebox';

export const DetokenizeRequest = Type.Object({
  model: Type.Optional(Type.String()),
  tokens: Type.Array(Type.Integer({ minimum: 0 })),
});
export type DetokenizeRequest = Static<typeof DetokenizeRequest>;
